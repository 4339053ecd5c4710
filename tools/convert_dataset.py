#!/usr/bin/env python
"""Convert a COCO-layout detection dataset into the other layouts the project reads, keeping chosen classes.

    python tools/convert_dataset.py coco2yolo --root ../shared/data/coco128 --classes person car dog --out /tmp/pcd_yolo
    python tools/convert_dataset.py coco2voc --root ../shared/data/coco128 --classes person car dog --out /tmp/pcd_voc
    python tools/convert_dataset.py coco2crops --root ../shared/data/coco128 --classes dog cat --out /tmp/dogcat

The source is ``root/annotations/instances_<split>.json`` with the images in ``root/<split>/`` (``--train-split``
train2017 and ``--val-split`` val2017 become train and val), read and checked by
:func:`vision_tasks.data.read_coco`. ``--classes`` chooses the classes and their label order (default: all, in
category id order); boxes of other classes are left out, and images without any box left are negatives unless
``--skip-empty``.

- ``coco2yolo``: ``out/images/{train,val}/``, ``out/labels/{train,val}/<stem>.txt`` (``class x_center y_center
  width height``, fractions of the image size; negatives get an empty file) and ``out/data.yaml`` (``train``,
  ``val``, ``nc``, ``names``; no ``path``, so it is read relative to its folder). Crowd boxes are dropped (YOLO has
  no ignore flag). Train with ``data=yolo data.root=out``.
- ``coco2voc``: a flat VOC folder, ``out/<stem>.jpg`` with ``out/<stem>.xml`` beside it and ``out/train.txt`` /
  ``out/val.txt`` listing the stems; boxes in VOC's 1-based convention (``xmin = x + 1``, ``xmax = x + w``,
  4 decimals kept), crowd boxes written as ``difficult`` (both are ignored by evaluation). Stems found in both
  splits are prefixed with the split name. Train with ``data=voc_folder data.root=out
  data.train_list=train.txt data.val_list=val.txt data.class_names=[...]``.
- ``coco2crops``: an ImageFolder classification set ``out/{train,val}/<class>/<stem>_<n>.jpg`` of the objects of
  the chosen classes whose box is at least ``--min-size`` pixels on its shorter side, each side moved out by
  ``--context`` times the box's width (height), clipped to the image; ``--max-per-class`` keeps a seeded sample.
  Crowd boxes are skipped. Train with ``task=classification data=image_folder data.root=out``.

The images of the YOLO and VOC sets are symlinked (``--copy``: copied). Nothing is overwritten: ``--out`` must not exist or be empty; the set
is written into a temporary sibling folder and renamed to ``--out`` at the end, so an error leaves nothing
half-written. ``out/conversion.json`` records the source, the classes and the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml
from PIL import Image

from vision_tasks.data import DataError, load_rgb, read_coco
from vision_tasks.data.formats.detection import DetectionAnnotations, DetectionRecord

Writer = Callable[[Path], dict]  # writes a converted set into a folder; returns its counts


class ConversionError(Exception):
    """A problem with the arguments or the source, reported as one line, before anything is written."""


# --------------------------------------------------------------------------------------------------
# Reading the source


def read_split(root: Path, split: str) -> DetectionAnnotations:
    return read_coco(root / "annotations" / f"instances_{split}.json", root / split)


def choose_classes(annotations: DetectionAnnotations, classes: Sequence[str] | None, source: Path) -> list[int]:
    """The source label of each chosen class, in the chosen order (all, in category id order, when None)."""
    names = annotations.class_names
    if not classes:
        return list(range(len(names)))
    unknown = [name for name in classes if name not in names]
    if unknown:
        raise ConversionError(f"{source} has no class {unknown}; its classes are {names}")
    if len(set(classes)) != len(classes):
        raise ConversionError(f"--classes names a class twice: {list(classes)}")
    return [names.index(name) for name in classes]


def chosen_boxes(
    record: DetectionRecord, source_labels: list[int], *, crowd: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The record's boxes of the chosen classes (with crowd boxes when ``crowd``): boxes, new labels, iscrowd."""
    new_label = {label: index for index, label in enumerate(source_labels)}
    keep = np.array([label in new_label for label in record.labels.tolist()], dtype=bool).reshape(-1)
    if not crowd:
        keep &= record.iscrowd == 0
    labels = np.array([new_label[label] for label in record.labels[keep].tolist()], dtype=np.int64)
    return record.boxes[keep].astype(np.float64), labels, record.iscrowd[keep]


def output_stems(splits: dict[str, DetectionAnnotations], *, flat: bool) -> dict[str, list[str]]:
    """The output file stem of each record: its image's stem, prefixed with the split name when all go into
    one folder (``flat``) and some stem is in both splits. Raises if two images would still share a stem."""
    stems = {split: [record.path.stem for record in ann.records] for split, ann in splits.items()}
    if flat and set(stems["train"]) & set(stems["val"]):
        stems = {split: [f"{split}_{stem}" for stem in names] for split, names in stems.items()}
    groups = [stems["train"] + stems["val"]] if flat else list(stems.values())
    for names in groups:
        clashes = sorted(stem for stem, n in Counter(names).items() if n > 1)
        if clashes:
            raise ConversionError(f"several images share the stem(s) {clashes[:5]}: their output files would clash")
    return stems


# --------------------------------------------------------------------------------------------------
# Writing


def place_image(source: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(source, target)
    else:
        os.symlink(source.resolve(), target)


def number(value: float, decimals: int = 10) -> str:
    """``value`` rounded to ``decimals`` as short decimal text. YOLO's fractions keep 10 decimals, so that their
    edges read back inside [0, 1]; pixels 4 (the boxes are float32: more digits would be noise)."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def yolo_lines(boxes: np.ndarray, labels: np.ndarray, height: int, width: int) -> str:
    lines = []
    for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist()):
        x0, x1, y0, y1 = x0 / width, x1 / width, y0 / height, y1 / height
        values = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
        lines.append(" ".join([str(label), *(number(v) for v in values)]) + "\n")
    return "".join(lines)


def voc_xml(file_name: str, height: int, width: int, boxes, names: list[str], difficult) -> str:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "filename").text = file_name
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(annotation, "segmented").text = "0"
    for (x0, y0, x1, y1), name, hard in zip(boxes.tolist(), names, difficult.tolist()):
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(hard))
        bndbox = ET.SubElement(obj, "bndbox")
        # VOC pixels are 1-based and inclusive: the continuous box x0..x1 is columns x0 + 1 .. x1
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, tag).text = number(value, 4)
    ET.indent(annotation)
    return ET.tostring(annotation, encoding="unicode") + "\n"


def written_atomically(out: Path, write: Writer, summary: dict) -> dict:
    """Run ``write(folder)`` in a temporary sibling of ``out``, add ``conversion.json`` (``summary`` and the
    counts ``write`` returns), rename the folder to ``out``; on any error remove it. Returns the counts."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} exists and is not an empty folder: choose another --out (nothing is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        counts = write(tmp)
        (tmp / "conversion.json").write_text(json.dumps({**summary, "counts": counts}, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above; fails rather than overwrite if something appeared since
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


# --------------------------------------------------------------------------------------------------
# The conversions


def coco2yolo(splits, source_labels: list[int], names: list[str], *, copy: bool, skip_empty: bool) -> Writer:
    stems = output_stems(splits, flat=False)

    def write(folder: Path) -> dict:
        counts = {}
        for split, found in splits.items():
            per_class, images, negatives = Counter(), 0, 0
            (folder / "labels" / split).mkdir(parents=True)
            for record, stem in zip(found.records, stems[split]):
                boxes, labels, _ = chosen_boxes(record, source_labels, crowd=False)
                if not len(boxes) and skip_empty:
                    continue
                place_image(record.path, folder / "images" / split / f"{stem}{record.path.suffix}", copy)
                (folder / "labels" / split / f"{stem}.txt").write_text(
                    yolo_lines(boxes, labels, record.height, record.width)
                )
                per_class.update(names[label] for label in labels.tolist())
                images, negatives = images + 1, negatives + (not len(boxes))
            counts[split] = {"images": images, "negatives": negatives, "boxes": dict(per_class)}
        data = {"train": "images/train", "val": "images/val", "nc": len(names), "names": dict(enumerate(names))}
        header = "# YOLO dataset written by tools/convert_dataset.py coco2yolo; folders relative to this file.\n"
        (folder / "data.yaml").write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return counts

    return write


def coco2voc(splits, source_labels: list[int], names: list[str], *, copy: bool, skip_empty: bool) -> Writer:
    stems = output_stems(splits, flat=True)

    def write(folder: Path) -> dict:
        counts = {}
        for split, found in splits.items():
            per_class, listed, negatives, difficult = Counter(), [], 0, 0
            for record, stem in zip(found.records, stems[split]):
                boxes, labels, crowd = chosen_boxes(record, source_labels, crowd=True)
                if not len(boxes) and skip_empty:
                    continue
                file_name = f"{stem}{record.path.suffix}"
                place_image(record.path, folder / file_name, copy)
                box_names = [names[label] for label in labels.tolist()]
                xml = voc_xml(file_name, record.height, record.width, boxes, box_names, crowd)
                (folder / f"{stem}.xml").write_text(xml)
                per_class.update(name for name, hard in zip(box_names, crowd.tolist()) if not hard)
                listed.append(stem)
                negatives += not len(boxes)
                difficult += int(crowd.sum())
            (folder / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in listed))
            counts[split] = {"images": len(listed), "negatives": negatives, "boxes": dict(per_class),
                             "difficult": difficult}
        return counts

    return write


Crop = tuple[DetectionRecord, int, tuple[int, int, int, int]]  # record, box index, (x0, y0, x1, y1) pixels


def crop_boxes(
    splits, source_labels: list[int], names: list[str], *, min_size: float, context: float,
    max_per_class: int | None, seed: int,
) -> dict[str, dict[str, list[Crop]]]:
    """``split -> class -> crops``: the chosen non-crowd boxes of at least ``min_size`` px on the shorter side,
    each side moved out by ``context`` times the box's width (height), clipped to the image; in source order,
    a seeded sample of ``max_per_class`` where there are more. Raises if a class has none in a split."""
    crops: dict[str, dict[str, list[Crop]]] = {}
    for split, found in splits.items():
        per_class: dict[str, list[Crop]] = {name: [] for name in names}
        for record in found.records:
            boxes, labels, _ = chosen_boxes(record, source_labels, crowd=False)
            for index, ((x0, y0, x1, y1), label) in enumerate(zip(boxes.tolist(), labels.tolist())):
                w, h = x1 - x0, y1 - y0
                if min(w, h) < min_size:
                    continue
                left, top = max(0, int(np.floor(x0 - context * w))), max(0, int(np.floor(y0 - context * h)))
                right = min(record.width, int(np.ceil(x1 + context * w)))
                bottom = min(record.height, int(np.ceil(y1 + context * h)))
                per_class[names[label]].append((record, index, (left, top, right, bottom)))
        if max_per_class is not None:
            rng = np.random.default_rng(seed)
            for name, items in per_class.items():
                if len(items) > max_per_class:
                    chosen = sorted(rng.choice(len(items), size=max_per_class, replace=False).tolist())
                    per_class[name] = [items[i] for i in chosen]
        crops[split] = per_class
    empty = [f"{name} ({split})" for split, per_class in crops.items() for name, got in per_class.items() if not got]
    if empty:
        raise ConversionError(
            f"no object of at least {min_size:g} px on its shorter side for {', '.join(empty)}: an ImageFolder class "
            "needs images in both splits (lower --min-size, or choose other classes)"
        )
    return crops


def coco2crops(crops: dict[str, dict[str, list[Crop]]]) -> Writer:
    def write(folder: Path) -> dict:
        counts: dict[str, dict[str, int]] = {}
        for split, per_class in crops.items():
            counts[split] = {}
            for name, items in per_class.items():
                target = folder / split / name.replace("/", "_")
                target.mkdir(parents=True)
                pixels, loaded = None, None
                for record, index, (x0, y0, x1, y1) in items:  # grouped by image: load each once
                    if loaded != record.path:
                        pixels, loaded = load_rgb(record.path), record.path
                    Image.fromarray(pixels[y0:y1, x0:x1]).save(target / f"{record.path.stem}_{index}.jpg", quality=95)
                counts[split][name] = len(items)
        return counts

    return write


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "coco2yolo": "YOLO txt layout with data.yaml",
        "coco2voc": "flat folder of images with VOC XML files, train.txt and val.txt",
        "coco2crops": "ImageFolder classification set of object crops",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--root", type=Path, required=True, help="COCO layout: annotations/instances_<split>.json")
        sub.add_argument("--out", type=Path, required=True, help="output folder: must not exist, or be empty")
        sub.add_argument("--classes", nargs="+", default=None, help="class names to keep, in label order (all)")
        sub.add_argument("--train-split", default="train2017", help="source split written as train (train2017)")
        sub.add_argument("--val-split", default="val2017", help="source split written as val (val2017)")
        if name == "coco2crops":
            sub.add_argument("--min-size", type=float, default=32, help="shortest box side kept, in pixels (32)")
            sub.add_argument("--context", type=float, default=0.1, help="margin on each side, times the box side (0.1)")
            sub.add_argument("--max-per-class", type=int, default=None, help="a seeded sample of at most N per class")
            sub.add_argument("--seed", type=int, default=0, help="seed of --max-per-class (0)")
        else:
            sub.add_argument("--copy", action="store_true", help="copy the images (default: symlink them)")
            sub.add_argument("--skip-empty", action="store_true", help="leave out images without a box of the classes")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> dict:
    """Read, check, write; returns the summary written to ``conversion.json``."""
    root, out = args.root.expanduser(), args.out.expanduser()
    if args.command == "coco2crops" and (args.min_size < 1 or args.context < 0 or (args.max_per_class or 1) < 1):
        raise ConversionError("--min-size must be at least 1, --context at least 0, --max-per-class at least 1")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # before reading: a quick refusal
        raise ConversionError(f"{out} exists and is not an empty folder: choose another --out (nothing is overwritten)")
    splits = {"train": read_split(root, args.train_split), "val": read_split(root, args.val_split)}
    if splits["train"].class_names != splits["val"].class_names:
        raise ConversionError(f"the {args.train_split} and {args.val_split} splits of {root} have different categories")
    source_labels = choose_classes(splits["val"], args.classes, root / "annotations")
    names = [splits["val"].class_names[label] for label in source_labels]
    if args.command == "coco2crops":
        crops = crop_boxes(splits, source_labels, names, min_size=args.min_size, context=args.context,
                           max_per_class=args.max_per_class, seed=args.seed)
        write = coco2crops(crops)
    else:
        convert_to = {"coco2yolo": coco2yolo, "coco2voc": coco2voc}[args.command]
        write = convert_to(splits, source_labels, names, copy=args.copy, skip_empty=args.skip_empty)
    summary = {
        "command": args.command, "source": str(root.resolve()),
        "splits": {"train": args.train_split, "val": args.val_split}, "classes": names,
    }
    summary["counts"] = written_atomically(out, write, summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = convert(args)
    except (ConversionError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({summary['command']}, classes {summary['classes']})")
    for split, counts in summary["counts"].items():
        print(f"  {split}: {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
