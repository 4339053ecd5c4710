"""COCO instances JSON: ``annotations/instances_<split>.json`` + ``<split>/`` (COCO 2017 layout).

:func:`read_coco` checks what it reads before training and raises :class:`DataError` naming the
file and the reason; it produces the :class:`~vision_tasks.data.formats.detection.DetectionAnnotations`
that every detection format shares.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..common import MAX_LISTED
from ..errors import DataError
from .detection import DetectionAnnotations, check_images_exist, detection_record, group_by_image, sanitize_boxes

__all__ = ["COCO_LAYOUT", "coco_categories", "load_json", "read_coco", "read_coco_instances"]

COCO_LAYOUT = "root/annotations/instances_<split>.json with the images in root/<split>/"


def read_coco(annotation_file: str | os.PathLike[str], image_dir: str | os.PathLike[str]) -> DetectionAnnotations:
    """Read a COCO instances file whose images are in ``image_dir``.

    Categories, sorted by id, become labels ``0..C-1``. Records are sorted by image id; images
    without annotations are kept. ``iscrowd`` is kept as a flag (crowd regions are ignored by COCO
    evaluation and are no positives in training). ``area`` is the annotation's (the box's if absent).

    The file is parsed with :mod:`json` rather than ``pycocotools.coco.COCO``, which prints to
    stdout and fails on a malformed entry with a bare ``KeyError``; the result is what ``COCO``
    indexes, with every entry checked.

    Raises:
        DataError: naming the file: it is missing, does not parse, lacks ``images``, ``annotations``
            or ``categories`` or a field of an entry; images it lists are missing from ``image_dir``
            (checked up front, a few listed with the count); annotations refer to category or image
            ids it does not define.
    """
    return _read_coco(annotation_file, image_dir, with_masks=False)


def read_coco_instances(annotation_file: str | os.PathLike[str], image_dir: str | os.PathLike[str], *,
                        require_masks: bool = True) -> DetectionAnnotations:
    """:func:`read_coco` with each box's instance mask: the records are
    :class:`~vision_tasks.data.formats.instances.InstanceRecord` s, whose ``segmentations`` hold each box's COCO
    ``segmentation`` (polygons, RLE or compressed RLE, as pycocotools decodes them; the multi-task readers
    derive the class-index mask and the image labels from them).

    A file whose annotations have no ``segmentation`` at all (boxes only, e.g. converted from YOLO labels) is
    refused with ``require_masks``; without, it gives plain :class:`DetectionRecord` s (no masks).

    Raises:
        DataError: as :func:`read_coco`, and naming the file when an annotation has no ``segmentation``
            (all of them, with ``require_masks``: a file of boxes only) or one that is neither polygons nor RLE.
    """
    return _read_coco(annotation_file, image_dir, with_masks=True, require_masks=require_masks)


def _read_coco(annotation_file: str | os.PathLike[str], image_dir: str | os.PathLike[str], *,
               with_masks: bool, require_masks: bool = True) -> DetectionAnnotations:
    annotation_file = Path(annotation_file).expanduser()
    image_dir = Path(image_dir).expanduser()
    data = load_json(annotation_file)
    missing_keys = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing_keys:
        raise DataError(
            f"{annotation_file} is not a COCO instances file: no list {missing_keys}; found keys {sorted(data)}"
        )
    category_ids, class_names = coco_categories(data["categories"], annotation_file)
    images = _coco_images(data["images"], annotation_file)
    check_images_exist(annotation_file, image_dir, [file_name for _, file_name, _, _ in images])

    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    row_of = {image[0]: row for row, image in enumerate(images)}
    table = _coco_annotation_table(data["annotations"], annotation_file, with_masks)
    if with_masks and table["segmentation"] and not any(table["segmentation"]):  # boxes only
        if require_masks:
            raise DataError(f"{annotation_file}: none of its {len(table['segmentation'])} annotations has a "
                            "'segmentation' (a file of boxes only): it gives no masks for a segmentation head")
        with_masks = False
    unknown_categories = sorted(set(table["category_id"].tolist()) - set(label_of))
    if unknown_categories:
        raise DataError(
            f"{annotation_file}: annotations use category id(s) {unknown_categories} that 'categories' does not "
            f"define (it defines {category_ids})"
        )
    unknown_images = sorted(set(table["image_id"].tolist()) - set(row_of))
    if unknown_images:
        raise DataError(
            f"{annotation_file}: annotations refer to {len(unknown_images)} image id(s) that 'images' does not list, "
            f"e.g. {unknown_images[:MAX_LISTED]}"
        )
    rows = np.array([row_of[i] for i in table["image_id"].tolist()], dtype=np.int64)
    sizes = np.array([(height, width) for _, _, height, width in images], dtype=np.float64).reshape(-1, 2)
    x, y, w, h = table["bbox"].T
    boxes, keep = sanitize_boxes(np.stack([x, y, x + w, y + h], 1), sizes[rows], annotation_file)
    labels = np.array([label_of[c] for c in table["category_id"].tolist()], dtype=np.int64)
    area = np.where(np.isnan(table["area"]), (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), table["area"])

    rows, boxes, labels, iscrowd, area = rows[keep], boxes[keep], labels[keep], table["iscrowd"][keep], area[keep]
    segmentations = [s for s, k in zip(table.get("segmentation", ()), keep.tolist()) if k]
    per_image = group_by_image(rows, len(images))
    records = []
    for row in sorted(range(len(images)), key=lambda r: images[r][0]):
        index = per_image[row]
        image_id, file_name, height, width = images[row]
        fields = boxes[index], labels[index], iscrowd[index], area[index]
        record = detection_record(image_dir / file_name, image_id, height, width, *fields)
        if with_masks:
            from .instances import instance_record  # pycocotools: only for the readers that decode masks

            record = instance_record(record, [segmentations[i] for i in index.tolist()], annotation_file)
        records.append(record)
    return DetectionAnnotations(records, class_names, category_ids)


def load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist; expected the layout {COCO_LAYOUT}")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"cannot parse the annotation file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a COCO instances file: the top level is a {type(data).__name__}, not an object")
    return data


def coco_categories(categories: list[Any], path: Path) -> tuple[list[int], list[str]]:
    """Category ids sorted, and their names."""
    try:
        pairs = sorted((_int(c["id"]), str(c["name"])) for c in categories)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: every entry of 'categories' needs an integer 'id' and a 'name' ({exc!r})") from exc
    if not pairs:
        raise DataError(f"{path}: 'categories' is empty")
    ids = [i for i, _ in pairs]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise DataError(f"{path}: category id(s) {duplicates} defined more than once")
    return ids, [name for _, name in pairs]


def _coco_images(images: list[Any], path: Path) -> list[tuple[int, str, int, int]]:
    """``(id, file_name, height, width)`` per entry of ``images``."""
    out = []
    for entry in images:
        try:
            item = (_int(entry["id"]), str(entry["file_name"]), _int(entry["height"]), _int(entry["width"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{path}: image entry {_short(entry)} needs an integer 'id', 'height', 'width' and a 'file_name' "
                f"({exc!r})"
            ) from exc
        if item[2] < 1 or item[3] < 1:
            raise DataError(f"{path}: image {item[0]} ({item[1]}) has size {item[3]}x{item[2]}")
        out.append(item)
    duplicates = sorted(i for i, n in Counter(item[0] for item in out).items() if n > 1)
    if duplicates:
        raise DataError(f"{path}: image id(s) listed more than once, e.g. {duplicates[:MAX_LISTED]}")
    return out


def _coco_annotation_table(annotations: list[Any], path: Path, with_masks: bool = False) -> dict[str, Any]:
    """The annotations as columns: image_id, category_id, bbox (N, 4) xywh, area (NaN if absent), iscrowd, and
    with ``with_masks`` the list of their ``segmentation`` entries."""
    image_ids, category_ids, bboxes, areas, crowds, masks = [], [], [], [], [], []
    for entry in annotations:
        try:
            image_ids.append(_int(entry["image_id"]))
            category_ids.append(_int(entry["category_id"]))
            bbox = [float(v) for v in entry["bbox"]]
            if len(bbox) != 4:
                raise ValueError(f"bbox has {len(bbox)} numbers")
            bboxes.append(bbox)
            areas.append(float(entry["area"]) if entry.get("area") is not None else np.nan)
            crowds.append(1 if entry.get("iscrowd") else 0)
            if with_masks:
                masks.append(entry.get("segmentation"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"{path}: annotation {_short(entry)} needs an integer 'image_id' and 'category_id' and a "
                f"'bbox' [x, y, width, height] ({exc!r})"
            ) from exc
    table: dict[str, Any] = {"segmentation": masks} if with_masks else {}
    return {
        **table,
        "image_id": np.array(image_ids, dtype=np.int64),
        "category_id": np.array(category_ids, dtype=np.int64),
        "bbox": np.array(bboxes, dtype=np.float64).reshape(-1, 4),
        "area": np.array(areas, dtype=np.float64),
        "iscrowd": np.array(crowds, dtype=np.int64),
    }


def _int(value: Any) -> int:
    """An integer from JSON (``3`` or ``3.0``, not ``3.5``, ``True`` or ``"3"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def _short(entry: Any, limit: int = 120) -> str:
    text = json.dumps(entry) if isinstance(entry, (dict, list)) else repr(entry)
    return text if len(text) <= limit else text[: limit - 3] + "..."
