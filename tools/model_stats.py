"""Parameter and multiply-add counts of this project's models beside the paper's and the references'.

Counting convention (PAPER.md section 9, ``vision_tasks.stats``): params include BN affine
(torchvision's convention); MAdds are the multiply-adds of convolutions and linear layers for one
image, FlopCounterMode FLOPs / 2. The TF-Slim checkpoint table counts params without BN and with
1001 classes, so it is compared with our count in that convention.

Each table is a "section": a title, its columns and a function that returns its rows
(``SECTIONS``): classification (Table 2 / Slim table), ssdlite (Tables 5 and 6), deeplab (Table 7).

Usage::

    python tools/model_stats.py                                  # every section, paper defaults
    python tools/model_stats.py --section classification --resolution 224 192 160 128 96
    python tools/model_stats.py --section ssdlite --ssdlite-resolution 300 320
    python tools/model_stats.py --section deeplab --deeplab-resolution 513
    python tools/model_stats.py --json stats.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vision_tasks.files import atomic_write  # noqa: E402
from vision_tasks.models import deeplabv3_mobilenet_v2, mobilenet_v2_classifier, ssdlite_mobilenet_v2  # noqa: E402
from vision_tasks.stats import MADD_OPS, count_params, flops_by_op  # noqa: E402
from vision_tasks.models import MF_SCALES, scale_dimension  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Reference numbers (PAPER.md section 1.5).

# [SLIM-README] checkpoint table: (width, resolution) -> (MACs in M, params in M; no BN, 1001 classes).
SLIM_CHECKPOINTS: dict[tuple[float, int], tuple[float, float]] = {
    (1.4, 224): (582, 6.06),
    (1.3, 224): (509, 5.34),
    (1.0, 224): (300, 3.47), (1.0, 192): (221, 3.47), (1.0, 160): (154, 3.47),
    (1.0, 128): (99, 3.47), (1.0, 96): (56, 3.47),
    (0.75, 224): (209, 2.61), (0.75, 192): (153, 2.61), (0.75, 160): (107, 2.61),
    (0.75, 128): (69, 2.61), (0.75, 96): (39, 2.61),
    (0.5, 224): (97, 1.95), (0.5, 192): (71, 1.95), (0.5, 160): (50, 1.95),
    (0.5, 128): (32, 1.95), (0.5, 96): (18, 1.95),
    (0.35, 224): (59, 1.66), (0.35, 192): (43, 1.66), (0.35, 160): (30, 1.66),
    (0.35, 128): (20, 1.66), (0.35, 96): (11, 1.66),
}
# [CALC] analytic MACs at 224 (M).
CALC_MACS_224: dict[float, float] = {1.4: 582.2, 1.3: 509.4, 1.0: 300.8, 0.75: 209.1, 0.5: 97.1, 0.35: 59.3}

# [P] SSDLite on MobileNetV2, 80 COCO classes, 320x320 input (PAPER.md 3.1).
SSDLITE_PAPER_RESOLUTION = 320
TABLE6_SSDLITE = (4.3e6, 0.8e9)  # Table 6, MNet V2 + SSDLite: params, MAdds
TABLE5_SSDLITE_HEAD = (2.1e6, 0.35e9)  # Table 5, SSDLite head: params, MAdds

# [P] Table 7, the "MNet V2*" rows (head on layer18, 21 classes, 513x513 PASCAL input):
# (output stride, ASPP, MF) -> (params, MAdds). MF = inputs at scales 0.5 ... 1.75, each also flipped.
DEEPLAB_PAPER_RESOLUTION = 513
TABLE7_MNV2: dict[tuple[int, bool, bool], tuple[float, float]] = {
    (16, True, False): (4.52e6, 5.8e9),
    (8, True, True): (4.52e6, 387e9),
    (16, False, False): (2.11e6, 2.75e9),
    (8, False, True): (2.11e6, 152.6e9),
}

# ---------------------------------------------------------------------------------------------
# Table machinery shared by all sections.


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[Any], str] = str


@dataclass
class Section:
    name: str
    title: str
    columns: list[Column]
    rows: Callable[[argparse.Namespace], list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)


def rel_diff(ours: float | None, ref: float | None) -> float | None:
    """Relative difference ``ours / ref - 1`` (None when either is missing)."""
    if ours is None or ref is None or ref == 0:
        return None
    return ours / ref - 1.0


def _fmt_int(v: Any) -> str:
    return "-" if v is None else f"{v:,}"


def _fmt_m(digits: int) -> Callable[[Any], str]:
    return lambda v: "-" if v is None else f"{v / 1e6:.{digits}f}"


def _fmt_ref(digits: int) -> Callable[[Any], str]:
    return lambda v: "-" if v is None else f"{v:.{digits}f}"


def _fmt_pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:+.2f}%"


def format_table(section: Section, rows: list[dict[str, Any]]) -> str:
    cells = [[c.header for c in section.columns]] + [[c.fmt(r.get(c.key)) for c in section.columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(section.columns))]

    def line(values: list[str]) -> str:
        # first column left-aligned (the model name), numbers right-aligned
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    out = [section.title, line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(values) for values in cells[1:]]
    out += [f"  {note}" for note in section.notes]
    return "\n".join(out)


def measure_madds(model, resolution: int) -> tuple[int, list[str]]:
    """MAdds of ``model`` at ``resolution`` and every operator FlopCounterMode counted.

    Only convolutions and matrix multiplies (``vision_tasks.stats.MADD_OPS``) are summed; the
    operator list lets the table show that nothing else (BN, pooling, activations) was counted.
    """
    flops = flops_by_op(model, resolution)
    return sum(n for op, n in flops.items() if op in MADD_OPS) // 2, sorted(flops)


# ---------------------------------------------------------------------------------------------
# Section: ImageNet classification (paper Table 2 / Figure 5 / Table 4, Slim checkpoint table).


def classification_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torchvision

    rows = []
    for width in args.widths:
        ours = mobilenet_v2_classifier(num_classes=args.num_classes, width_mult=width)
        tv = torchvision.models.mobilenet_v2(num_classes=args.num_classes, width_mult=width)
        slim_convention = count_params(mobilenet_v2_classifier(num_classes=1001, width_mult=width), exclude_norm=True)
        params, tv_params = count_params(ours), count_params(tv)
        for resolution in args.resolution:
            (madds, ops), (tv_madds, _) = measure_madds(ours, resolution), measure_madds(tv, resolution)
            slim_macs, slim_params = SLIM_CHECKPOINTS.get((width, resolution), (None, None))
            calc = CALC_MACS_224.get(width) if resolution == 224 else None
            rows.append(
                dict(
                    section="classification", model=f"MobileNetV2 {width}", width=width, resolution=resolution,
                    num_classes=args.num_classes, params=params, tv_params=tv_params,
                    d_tv_params=rel_diff(params, tv_params), params_slim_convention=slim_convention,
                    slim_params_m=slim_params, d_slim_params=rel_diff(slim_convention / 1e6, slim_params),
                    madds=madds, tv_madds=tv_madds, d_tv_madds=rel_diff(madds, tv_madds),
                    slim_macs_m=slim_macs, d_slim_macs=rel_diff(madds / 1e6, slim_macs),
                    calc_macs_m=calc, d_calc_macs=rel_diff(madds / 1e6, calc), flop_ops=ops,
                )
            )
    return rows


CLASSIFICATION = Section(
    name="classification",
    title="MobileNetV2 classifier (paper Table 2; Slim checkpoint table, PAPER.md 1.5)",
    columns=[
        Column("model", "model"),
        Column("resolution", "res"),
        Column("params", "params", _fmt_int),
        Column("tv_params", "torchvision", _fmt_int),
        Column("d_tv_params", "d", _fmt_pct),
        Column("params_slim_convention", "params*(M)", _fmt_m(3)),
        Column("slim_params_m", "Slim(M)", _fmt_ref(2)),
        Column("d_slim_params", "d", _fmt_pct),
        Column("madds", "MAdds(M)", _fmt_m(2)),
        Column("tv_madds", "torchvision", _fmt_m(2)),
        Column("d_tv_madds", "d", _fmt_pct),
        Column("slim_macs_m", "Slim(M)", _fmt_ref(0)),
        Column("d_slim_macs", "d", _fmt_pct),
        Column("calc_macs_m", "[CALC](M)", _fmt_ref(1)),
        Column("d_calc_macs", "d", _fmt_pct),
    ],
    rows=classification_rows,
    notes=[
        "params: all parameters incl. BN, --num-classes classes (torchvision's convention); torchvision = "
        "torchvision.models.mobilenet_v2(width_mult=w).",
        "params*: ours without BN and with 1001 classes, the Slim table's convention (Slim: 2 decimals).",
        "MAdds: conv + linear multiply-adds for one image (FlopCounterMode FLOPs / 2). Slim: checkpoint "
        "table MACs; [CALC]: analytic count at 224. d = ours / reference - 1.",
        "Paper text [P]: 1.0 -> 3.4M params / 300M MAdds; 1.4 -> 6.9M / 585M (the 1.4 params do not "
        "match the released architecture, PAPER.md 1.5 DISCREPANCIES).",
    ],
)


# ---------------------------------------------------------------------------------------------
# Section: SSDLite detection (paper Tables 5 and 6).


def ssdlite_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    paper_model = args.ssdlite_classes == 80  # the paper's numbers are for 80 classes, its MAdds for 320x320
    rows = []
    for layout in ("tf", "torchvision"):
        model = ssdlite_mobilenet_v2(num_classes=args.ssdlite_classes, anchor_layout=layout)
        params, head_params = count_params(model), count_params(model.head)
        p_params, h_params = (TABLE6_SSDLITE[0], TABLE5_SSDLITE_HEAD[0]) if paper_model else (None, None)
        for resolution in args.ssdlite_resolution:
            madds, ops = measure_madds(model, resolution)
            head_madds = madds - measure_madds(model.backbone, resolution)[0]  # extras + predictors
            at_paper_size = paper_model and resolution == SSDLITE_PAPER_RESOLUTION
            p_madds, h_madds = (TABLE6_SSDLITE[1], TABLE5_SSDLITE_HEAD[1]) if at_paper_size else (None, None)
            with torch.no_grad():
                num_anchors = model.eval().forward_head(torch.zeros(1, 3, resolution, resolution))["anchors"].shape[0]
            rows.append(
                dict(
                    section="ssdlite", model=f"SSDLite MNV2 ({layout} anchors)", anchor_layout=layout,
                    resolution=resolution, num_classes=args.ssdlite_classes, num_anchors=num_anchors,
                    params=params, paper_params=p_params, d_paper_params=rel_diff(params, p_params),
                    madds=madds, paper_madds=p_madds, d_paper_madds=rel_diff(madds, p_madds),
                    head_params=head_params, paper_head_params=h_params, d_head_params=rel_diff(head_params, h_params),
                    head_madds=head_madds, paper_head_madds=h_madds, d_head_madds=rel_diff(head_madds, h_madds),
                    flop_ops=ops,
                )
            )
    return rows


SSDLITE = Section(
    name="ssdlite",
    title="SSDLite MobileNetV2 (paper Table 6: whole model; Table 5: SSDLite head)",
    columns=[
        Column("model", "model"),
        Column("resolution", "res"),
        Column("num_anchors", "anchors", _fmt_int),
        Column("params", "params", _fmt_int),
        Column("paper_params", "Table6(M)", _fmt_m(1)),
        Column("d_paper_params", "d", _fmt_pct),
        Column("madds", "MAdds(M)", _fmt_m(1)),
        Column("paper_madds", "Table6(M)", _fmt_m(0)),
        Column("d_paper_madds", "d", _fmt_pct),
        Column("head_params", "head params", _fmt_int),
        Column("paper_head_params", "Table5(M)", _fmt_m(1)),
        Column("d_head_params", "d", _fmt_pct),
        Column("head_madds", "head MAdds(M)", _fmt_m(1)),
        Column("paper_head_madds", "Table5(M)", _fmt_m(0)),
        Column("d_head_madds", "d", _fmt_pct),
    ],
    rows=ssdlite_rows,
    notes=[
        "--ssdlite-classes foreground classes + background (80: COCO, the paper's tables). tf anchors: TF OD API "
        "ssd_anchor_generator, 3 boxes per location on the first map, 6 elsewhere; torchvision: 6 everywhere.",
        "head = the 4 extra maps + the separable classification/regression predictors; head MAdds = whole model "
        "minus the backbone (up to layer19).",
        "Paper columns: 80 classes only, MAdds at its 320x320 input only. PAPER.md section 9: with 91 classes "
        "the tf layout gives 4.501M params, 0.750B MAdds at 300, 0.804B at 320.",
    ],
)

# ---------------------------------------------------------------------------------------------
# Section: DeepLabv3 segmentation (paper Table 7).


def deeplab_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    # Table 7's rows, then TF DeepLab's own ASPP variant (depthwise-separable atrous branches).
    variants = [(*key, False) for key in TABLE7_MNV2] + [(16, True, False, True)]
    rows = []
    for output_stride, aspp, mf, separable in variants:
        model = deeplabv3_mobilenet_v2(num_classes=21, output_stride=output_stride, aspp=aspp,
                                       separable_aspp=separable)
        params = count_params(model)
        model = model.to("meta")  # FlopCounterMode needs shapes only: count big MF inputs without computing them
        for resolution in args.deeplab_resolution:
            sizes = [scale_dimension(resolution, s) for s in MF_SCALES] if mf else [resolution]
            counted = [measure_madds(model, size) for size in sizes]
            madds = sum(n for n, _ in counted) * (2 if mf else 1)  # MF: every scale also left-right flipped
            paper = TABLE7_MNV2.get((output_stride, aspp, mf)) if not separable else None
            p_params = paper[0] if paper else None
            p_madds = paper[1] if paper and resolution == DEEPLAB_PAPER_RESOLUTION else None
            head = "separable ASPP" if separable else ("ASPP" if aspp else "no ASPP")
            rows.append(
                dict(
                    section="deeplab", model=f"MNV2* OS{output_stride} {head}" + (" MF" if mf else ""),
                    output_stride=output_stride, aspp=aspp, separable_aspp=separable, mf=mf,
                    resolution=resolution, params=params, paper_params=p_params,
                    d_paper_params=rel_diff(params, p_params), madds=madds, paper_madds=p_madds,
                    d_paper_madds=rel_diff(madds, p_madds), flop_ops=sorted({op for _, ops in counted for op in ops}),
                )
            )
    return rows


DEEPLAB = Section(
    name="deeplab",
    title="DeepLabv3 MobileNetV2* (head on layer18), 21 classes (paper Table 7)",
    columns=[
        Column("model", "model"),
        Column("resolution", "res"),
        Column("params", "params", _fmt_int),
        Column("paper_params", "Table7(M)", _fmt_m(2)),
        Column("d_paper_params", "d", _fmt_pct),
        Column("madds", "MAdds(B)", lambda v: "-" if v is None else f"{v / 1e9:.2f}"),
        Column("paper_madds", "Table7(B)", lambda v: "-" if v is None else f"{v / 1e9:.2f}"),
        Column("d_paper_madds", "d", _fmt_pct),
    ],
    rows=deeplab_rows,
    notes=[
        "ASPP: three regular 3x3 atrous convs (rates 6/12/18 at OS 16, 12/24/36 at OS 8), which Table 7's 4.52M "
        "implies; separable ASPP is TF DeepLab's default (not in Table 7).",
        "MF: the image at scales 0.5, 0.75, ..., 1.75 (TF DeepLab sizes: 513 -> 257 ... 897), each also flipped: the sum of the 12 passes.",
        "The released TF models (PAPER.md section 4.2) are the no-ASPP rows.",
    ],
)

SECTIONS: dict[str, Section] = {s.name: s for s in (CLASSIFICATION, SSDLITE, DEEPLAB)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Print params and multiply-adds of the project's models beside the paper's numbers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--section", choices=[*SECTIONS, "all"], default="all", help="which table to print")
    parser.add_argument("--resolution", type=int, nargs="+", default=[224], help="input sizes (square)")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.35, 0.5, 0.75, 1.0, 1.4],
                        help="width multipliers (classification)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    parser.add_argument("--ssdlite-resolution", type=int, nargs="+", default=[300, 320],
                        help="SSDLite input sizes (square; the TF config uses 300, the paper 320)")
    parser.add_argument("--ssdlite-classes", type=int, default=80, help="SSDLite foreground classes")
    parser.add_argument("--deeplab-resolution", type=int, nargs="+", default=[DEEPLAB_PAPER_RESOLUTION],
                        help="DeepLabv3 input sizes (square; the paper's PASCAL crop is 513)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if any(r < 32 for r in args.resolution):
        parser.error(f"--resolution values must be >= 32, got {args.resolution}")
    if any(r < 32 for r in args.ssdlite_resolution):
        parser.error(f"--ssdlite-resolution values must be >= 32, got {args.ssdlite_resolution}")
    if any(r < 32 for r in args.deeplab_resolution):
        parser.error(f"--deeplab-resolution values must be >= 32, got {args.deeplab_resolution}")
    if any(w <= 0 for w in args.widths):
        parser.error(f"--widths must be positive, got {args.widths}")
    if args.num_classes < 1:
        parser.error(f"--num-classes must be >= 1, got {args.num_classes}")
    if args.ssdlite_classes < 1:
        parser.error(f"--ssdlite-classes must be >= 1, got {args.ssdlite_classes}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    sections = list(SECTIONS.values()) if args.section == "all" else [SECTIONS[args.section]]
    all_rows: list[dict[str, Any]] = []
    for i, section in enumerate(sections):
        rows = section.rows(args)
        if i:
            print()
        print(format_table(section, rows))
        ops = sorted({op for r in rows for op in r.get("flop_ops", ())})
        if ops:
            extra = [op for op in ops if op not in MADD_OPS]
            print(f"  FlopCounterMode counted these operators: {', '.join(ops)}"
                  + (f" (left out of MAdds: {', '.join(extra)})" if extra else " (all conv/matmul)"))
        all_rows += rows
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, json.dumps(all_rows, indent=2) + "\n")
        print(f"\nwrote {len(all_rows)} rows to {args.json}")
    return all_rows


if __name__ == "__main__":
    main()
