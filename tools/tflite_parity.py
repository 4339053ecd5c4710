#!/usr/bin/env python
"""Our float models with the TFLite releases' weights vs the uint8 TFLite interpreter, side by side.

The models are what the releases' weight records describe (``vision_tasks.models.model_from_weights``:
the weights dequantized and batch norm folded by ``backbones.tflite.read_tflite``, ``padding="tf_same"``,
inputs normalised inside the model to [-1, 1]). Both get the same photo: resized bilinearly (PIL) to
the file's input size as uint8 ``q``; the interpreter takes ``q``, our model the [0, 1] image that its
own normalisation turns into exactly the interpreter's float reading of ``q``, ``(q - zero_point) *
scale`` (``(q - 128) / 128``; ``q / 255`` would give ``(q - 127.5) / 127.5``).

1. Classifier (``mobilenet_v2_1.0_224_quant.tflite``, whole photo resized to 224x224):
   top-1 on the 8 labelled photos of shared/weights (README table), and on the 128 coco128 val
   photos the fraction where our top-1 equals the interpreter's (target >= 0.92; a faithful port
   reaches 0.938, PAPER.md section 10) and where ours lies in the interpreter's top-2 (target >= 0.99).
   The interpreter's ranking is that of its uint8 logits (the tensor before its softmax; the uint8
   softmax ties too often); "in its top-2" means our class's logit is >= its second-highest logit.
2. DeepLab (``deeplabv3_mnv2_pascal_quant.tflite``; ``--dm05`` adds the width-0.5 release): on the
   coco128 val photos that have a VOC-21 mask, photo resized to 513x513; pixel argmax agreement at
   513x513 (target >= 0.985; faithful port 0.994), and the mIoU of both against the masks. For the
   mIoU both 513x513 label maps are resized back to the mask's resolution (nearest neighbour) and
   scored as the segmentation task scores (``SegmentationTask``): a torchmetrics confusion matrix
   summed over all photos (label 255 ignored), the IoU averaged over the classes present in the
   ground truth (``segmentation_scores``) (PAPER.md: interpreter 0.508, float port 0.500; ours must
   be within 0.03 of the interpreter's).

Usage::

    python tools/tflite_parity.py                 # classifier + DeepLab 1.0
    python tools/tflite_parity.py --dm05          # also the width-0.5 DeepLab
    python tools/tflite_parity.py --skip-classifier --limit 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.classification import MulticlassConfusionMatrix
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from backbones.tflite import read_tflite  # noqa: E402
from vision_tasks.models import model_from_weights  # noqa: E402
from vision_tasks.tasks.segmentation import segmentation_scores  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights"
COCO_VAL = SHARED / "data" / "coco128" / "val2017"
VOC_MASKS = SHARED / "data" / "coco128" / "voc21_masks" / "val2017"

# shared/weights/README.md: the interpreter's top-1 (1001-way index) on the labelled photos.
LABELLED = {"cat.bmp": 286, "bird.bmp": 20, "grace_hopper.bmp": 653, "parrot.jpg": 89, "owl.jpg": 83,
            "hot_dog.jpg": 935, "sunflower.bmp": 986, "dragonfly.bmp": 320}
TARGETS = {"top1_agree": 0.92, "in_top2": 0.99, "pixel_agree": 0.985, "miou_gap": 0.03}


def load_photo(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The photo as uint8 (H, W, 3), resized bilinearly (whole photo, no crop) to ``size`` (H, W)."""
    return np.asarray(Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR))


def to_float(q: np.ndarray, info: dict, model: torch.nn.Module) -> torch.Tensor:
    """(1, 3, H, W) input for ``model`` that its normalisation maps onto the interpreter's own float reading of
    its uint8 input, ``(q - zero_point) * scale``."""
    quant = info["input_quantization"]
    x = (torch.tensor(q, dtype=torch.float32) - quant["zero_point"]) * quant["scale"]
    x = x.permute(2, 0, 1)[None].contiguous()
    return x * model.preprocess.std + model.preprocess.mean


class TFLiteRunner:
    """The int8 interpreter on one uint8 image; ``tensor`` names an extra tensor to read back (e.g. the logits)."""

    def __init__(self, path: Path, before_op: str | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        # To read an intermediate tensor, run without delegates (XNNPACK would fuse it away).
        kwargs = dict(experimental_preserve_all_tensors=True,
                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES) if before_op else {}
        self.interp = Interpreter(model_path=str(path), **kwargs)
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]["index"]
        self.output = self.interp.get_output_details()[0]["index"]
        self.extra = None
        if before_op:
            op = next(o for o in self.interp._get_ops_details() if o["op_name"] == before_op)  # noqa: SLF001
            self.extra = op["inputs"][0]

    def __call__(self, q: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.input, q[None])
        self.interp.invoke()
        return self.interp.get_tensor(self.extra if self.extra is not None else self.output)[0].copy()


def build(path: Path):
    _, info = read_tflite(path)
    model, _ = model_from_weights(path)
    return model.eval(), info


def classifier_parity(limit: int | None) -> None:
    path = WEIGHTS / "mobilenet_v2_1.0_224_quant.tflite"
    model, info = build(path)
    runner = TFLiteRunner(path, before_op="SOFTMAX")  # the uint8 logits, 1001-way
    size = info["input_size"]

    print(f"\n== classifier: {path.name} (width {info['width_mult']}, {size[0]}x{size[1]}, padding {info['padding']})")
    print(f"{'photo':<18}{'README':>8}{'interpreter':>13}{'ours':>7}")
    ok_readme = ok_interp = 0
    for name, want in LABELLED.items():
        q = load_photo(WEIGHTS / name, size)
        with torch.no_grad():
            ours = int(model(to_float(q, info, model)).argmax()) + 1  # back to the 1001-way index
        theirs = int(runner(q).reshape(-1).argmax())
        ok_readme += ours == want
        ok_interp += ours == theirs
        print(f"{name:<18}{want:>8}{theirs:>13}{ours:>7}")
    print(f"labelled photos: ours = README {ok_readme}/{len(LABELLED)}, ours = interpreter {ok_interp}/{len(LABELLED)} "
          f"(target 8/8)")

    photos = sorted(COCO_VAL.glob("*.jpg"))[:limit]
    same = in_top2 = 0
    for photo in tqdm(photos, desc="classifier coco128 val", leave=False, mininterval=5):
        q = load_photo(photo, size)
        with torch.no_grad():
            ours = int(model(to_float(q, info, model)).argmax()) + 1
        logits = runner(q).reshape(-1).astype(np.int32)[1:]  # drop background: argmax over the 1000 classes
        logits = np.concatenate([[np.iinfo(np.int32).min], logits])
        same += ours == int(logits.argmax())
        in_top2 += logits[ours] >= np.sort(logits)[-2]
    n = len(photos)
    print(f"coco128 val ({n} photos): top-1 agreement {same / n:.3f} (target >= {TARGETS['top1_agree']}, "
          f"faithful port 0.938); ours in interpreter top-2 {in_top2 / n:.3f} (target >= {TARGETS['in_top2']})")


def deeplab_parity(filename: str, limit: int | None) -> None:
    path = WEIGHTS / filename
    model, info = build(path)
    runner = TFLiteRunner(path)  # output: the (513, 513) argmax
    size, k = info["input_size"], info["num_classes"]
    masks = sorted(VOC_MASKS.glob("*.png"))[:limit]
    print(f"\n== DeepLab: {path.name} (width {info['width_mult']}, {size[0]}x{size[1]}, output stride "
          f"{info['output_stride']}, padding {info['padding']})")
    agree, worst = [], (1.0, "")
    # the segmentation task's metric (SegmentationTask: ignore_index 255, VOC's "void")
    conf_ours, conf_theirs = (MulticlassConfusionMatrix(k, ignore_index=255) for _ in range(2))
    for mask_path in tqdm(masks, desc=f"deeplab {path.stem}", leave=False, mininterval=5):
        q = load_photo(COCO_VAL / f"{mask_path.stem}.jpg", size)
        with torch.no_grad():
            ours = model(to_float(q, info, model))[0].argmax(0).numpy().astype(np.uint8)
        theirs = runner(q).astype(np.uint8)
        a = float((ours == theirs).mean())
        agree.append(a)
        worst = min(worst, (a, mask_path.stem))
        gt = np.asarray(Image.open(mask_path))
        for pred, conf in ((ours, conf_ours), (theirs, conf_theirs)):
            resized = np.asarray(Image.fromarray(pred).resize(gt.shape[::-1], Image.NEAREST))
            conf.update(torch.from_numpy(resized.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
    mean_agree = float(np.mean(agree))
    m_ours, m_theirs = (float(segmentation_scores(conf.compute())["miou"]) for conf in (conf_ours, conf_theirs))
    print(f"{len(masks)} coco128 val photos with VOC-21 masks")
    print(f"pixel argmax agreement at {size[0]}x{size[1]}: {mean_agree:.4f} (worst {worst[0]:.3f}, {worst[1]}); "
          f"target >= {TARGETS['pixel_agree']}, faithful port 0.994")
    print(f"mIoU at mask resolution (classes present in ground truth): interpreter {m_theirs:.3f}, ours {m_ours:.3f}, "
          f"gap {abs(m_ours - m_theirs):.3f} (target <= {TARGETS['miou_gap']}; PAPER.md: 0.508 / 0.500)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dm05", action="store_true", help="also the width-0.5 DeepLab release")
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--skip-deeplab", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos (quick check)")
    args = parser.parse_args(argv)
    if not WEIGHTS.is_dir():
        sys.exit(f"{WEIGHTS} not found: this tool needs the repository's sibling ../shared")
    torch.set_grad_enabled(False)
    if not args.skip_classifier:
        classifier_parity(args.limit)
    if not args.skip_deeplab:
        deeplab_parity("deeplabv3_mnv2_pascal_quant.tflite", args.limit)
        if args.dm05:
            deeplab_parity("deeplabv3_mnv2_dm05_pascal_quant.tflite", args.limit)


if __name__ == "__main__":
    main()
