"""Object detection data: COCO JSON and Pascal VOC XML readers, the dataset, and the data modules.

Readers check what they read before training and raise :class:`DataError` naming the file and the
reason; both produce the same :class:`DetectionAnnotations`, so the rest of the pipeline does not
know the format:

- :func:`read_coco`: ``annotations/instances_<split>.json`` + ``<split>/`` (COCO 2017 layout).
- :func:`read_voc`: ``VOC<year>/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}``.

Boxes are xyxy in pixels of the image on disk (continuous coordinates: a box covering pixel
columns 0..9 spans x 0..10). Categories are mapped to contiguous foreground labels ``0..C-1`` and
back with ``category_ids``. Boxes partly outside their image are clipped, boxes with no width or
height (or nothing inside the image) are dropped, both counted in one warning per file; images
without boxes are kept as negatives.

:class:`DetectionDataset` returns ``(image, target)``: image float32 ``(3, H, W)``; target a dict
with ``boxes`` float32 ``(K, 4)`` xyxy in pixels of the transformed image, ``labels`` int64 ``(K,)``,
``iscrowd`` int64 ``(K,)`` (COCO crowd regions, VOC ``difficult`` objects: ignored by evaluation and
by training matches), ``area`` float32 ``(K,)`` (the annotation's area in original pixels),
``image_id`` int, ``orig_size`` int64 ``(2,)`` = (height, width) of the image on disk.
:func:`detection_collate` stacks the images and lists the targets.

Example::

    dm = CocoDetectionDataModule("~/data/coco", image_size=320, batch_size=24)
    dm.setup("fit")
    dm.class_names[:2], dm.category_ids[:2]      # ['person', 'bicycle'], [1, 2]
    images, targets = next(iter(dm.train_dataloader()))   # (24, 3, 320, 320), list of 24 dicts
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .classification import load_rgb
from .errors import DataError
from .loaders import GeneratedData, SplitDataModule
from .synthetic import SHAPES, default_data_dir
from .transforms import IMAGENET_MEAN, IMAGENET_STD, detection_eval_transform, detection_train_transform

__all__ = [
    "VOC_CLASSES",
    "CocoDetectionDataModule",
    "DetectionAnnotations",
    "DetectionDataset",
    "DetectionRecord",
    "SyntheticDetectionDataModule",
    "VOCDetectionDataModule",
    "detection_collate",
    "read_coco",
    "read_voc",
]

# The 20 Pascal VOC classes, in the usual label order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

COCO_LAYOUT = "root/annotations/instances_<split>.json with the images in root/<split>/"
VOC_LAYOUT = "root/VOC<year>/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}"

Target = dict[str, Any]
Transform = Callable[..., dict[str, Any]]

_MAX_LISTED = 5  # file names quoted in an error before "... and N more"


@dataclasses.dataclass(frozen=True, eq=False)
class DetectionRecord:
    """One image and its boxes, as read from the annotation file (pixels of the image on disk).

    ``boxes`` float32 ``(K, 4)`` xyxy; ``labels`` int64 ``(K,)`` contiguous labels; ``iscrowd`` int64
    ``(K,)`` 0/1; ``area`` float32 ``(K,)``; ``image_id`` the dataset's own id.
    """

    path: Path
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray


@dataclasses.dataclass(eq=False)
class DetectionAnnotations:
    """What a reader found: one :class:`DetectionRecord` per image, and the categories.

    ``class_names[label]`` and ``category_ids[label]`` are the name and the dataset's own id of
    contiguous label ``label``.
    """

    records: list[DetectionRecord]
    class_names: list[str]
    category_ids: list[int]

    def to_coco(self) -> dict[str, Any]:
        """The annotations as a COCO instances dict (``pycocotools.coco.COCO`` and ``COCOeval`` read it).

        Images keep their ids, boxes become ``[x, y, w, h]`` with their ``area`` and ``iscrowd``
        (COCOeval ignores detections matched to crowd regions, which is how VOC treats ``difficult``),
        categories their ids and names. Annotation ids run from 1.
        """
        images, annotations = [], []
        for record in self.records:
            images.append(
                {"id": record.image_id, "file_name": record.path.name, "height": record.height, "width": record.width}
            )
            for box, label, crowd, area in zip(
                record.boxes.tolist(), record.labels.tolist(), record.iscrowd.tolist(), record.area.tolist()
            ):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": self.category_ids[label],
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "area": area,
                        "iscrowd": crowd,
                    }
                )
        categories = [{"id": i, "name": name} for i, name in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}


# --------------------------------------------------------------------------------------------------
# COCO


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
    annotation_file = Path(annotation_file).expanduser()
    image_dir = Path(image_dir).expanduser()
    data = _load_json(annotation_file)
    missing_keys = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing_keys:
        raise DataError(
            f"{annotation_file} is not a COCO instances file: no list {missing_keys}; found keys {sorted(data)}"
        )
    category_ids, class_names = _coco_categories(data["categories"], annotation_file)
    images = _coco_images(data["images"], annotation_file)
    _check_images_exist(annotation_file, image_dir, [file_name for _, file_name, _, _ in images])

    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    row_of = {image[0]: row for row, image in enumerate(images)}
    table = _coco_annotation_table(data["annotations"], annotation_file)
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
            f"e.g. {unknown_images[:_MAX_LISTED]}"
        )
    rows = np.array([row_of[i] for i in table["image_id"].tolist()], dtype=np.int64)
    sizes = np.array([(height, width) for _, _, height, width in images], dtype=np.float64).reshape(-1, 2)
    x, y, w, h = table["bbox"].T
    boxes, keep = _sanitize_boxes(np.stack([x, y, x + w, y + h], 1), sizes[rows], annotation_file)
    labels = np.array([label_of[c] for c in table["category_id"].tolist()], dtype=np.int64)
    area = np.where(np.isnan(table["area"]), (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), table["area"])

    rows, boxes, labels, iscrowd, area = rows[keep], boxes[keep], labels[keep], table["iscrowd"][keep], area[keep]
    per_image = _group_by_image(rows, len(images))
    records = []
    for row in sorted(range(len(images)), key=lambda r: images[r][0]):
        index = per_image[row]
        image_id, file_name, height, width = images[row]
        fields = boxes[index], labels[index], iscrowd[index], area[index]
        records.append(_record(image_dir / file_name, image_id, height, width, *fields))
    return DetectionAnnotations(records, class_names, category_ids)


def _load_json(path: Path) -> dict[str, Any]:
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


def _coco_categories(categories: list[Any], path: Path) -> tuple[list[int], list[str]]:
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
        raise DataError(f"{path}: image id(s) listed more than once, e.g. {duplicates[:_MAX_LISTED]}")
    return out


def _coco_annotation_table(annotations: list[Any], path: Path) -> dict[str, np.ndarray]:
    """The annotations as columns: image_id, category_id, bbox (N, 4) xywh, area (NaN if absent), iscrowd."""
    image_ids, category_ids, bboxes, areas, crowds = [], [], [], [], []
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
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"{path}: annotation {_short(entry)} needs an integer 'image_id' and 'category_id' and a "
                f"'bbox' [x, y, width, height] ({exc!r})"
            ) from exc
    return {
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


# --------------------------------------------------------------------------------------------------
# Pascal VOC


def read_voc(
    root: str | os.PathLike[str],
    *,
    year: str = "2012",
    split: str = "train",
    class_names: Sequence[str] = VOC_CLASSES,
    keep_difficult: bool = True,
) -> DetectionAnnotations:
    """Read a Pascal VOC detection split: ``root/VOC<year>/ImageSets/Main/<split>.txt`` and its XML files.

    ``root`` may also be the ``VOC<year>`` folder itself. Labels follow ``class_names`` (the 20
    :data:`VOC_CLASSES` by default; pass your own for a custom dataset in VOC format); category ids
    are ``1..C``. VOC pixel coordinates are 1-based and inclusive: a box becomes ``xmin - 1, ymin - 1,
    xmax, ymax``. ``difficult`` objects are kept with ``iscrowd=1`` (ignored in evaluation, as VOC
    does, and in training matches) or dropped with ``keep_difficult=False``. ``area`` is the box's.
    The image is the XML's ``<filename>`` in ``JPEGImages`` (``<id>.jpg`` if absent); its size the
    XML's ``<size>`` (the image header's if absent). ``image_id`` is the index in the split list.

    Raises:
        DataError: naming the file: a missing folder, split list, XML file or image (images are
            checked up front, a few listed with the count); malformed XML or a missing field; an
            object of a class not in ``class_names`` (the classes, one file each, and the list).
    """
    class_names = [str(name) for name in class_names]
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and without repeats, got {class_names}")
    base = _voc_base(Path(root).expanduser(), str(year))
    split_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"VOC split list {split_file} does not exist; expected the layout {VOC_LAYOUT}")
    names = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"VOC split list {split_file} is empty")
    xml_files = [base / "Annotations" / f"{name}.xml" for name in names]
    missing = [str(p) for p in xml_files if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} annotation file(s) listed in {split_file} are missing: {_listing(missing)}")

    label_of = {name: label for label, name in enumerate(class_names)}
    parsed = [_parse_voc_xml(path) for path in xml_files]
    unknown: dict[str, Path] = {}
    for path, (_, _, _, objects) in zip(xml_files, parsed):
        for name, _, _ in objects:
            if name not in label_of:
                unknown.setdefault(name, path)
    if unknown:
        found = "; ".join(f"{name!r} in {path}" for name, path in unknown.items())
        raise DataError(f"VOC objects of classes not in class_names: {found}; class_names is {class_names}")

    paths = [base / "JPEGImages" / (file_name or f"{name}.jpg") for name, (file_name, _, _, _) in zip(names, parsed)]
    _check_images_exist(split_file, base / "JPEGImages", [str(p.relative_to(base / "JPEGImages")) for p in paths])
    sizes = [
        (height, width) if height and width else _image_size(path)
        for path, (_, height, width, _) in zip(paths, parsed)
    ]

    objects = [(image_index, obj) for image_index, (_, _, _, objs) in enumerate(parsed) for obj in objs]
    if not keep_difficult:
        objects = [(i, obj) for i, obj in objects if not obj[1]]
    rows = np.array([i for i, _ in objects], dtype=np.int64)
    raw = np.array([box for _, (_, _, box) in objects], dtype=np.float64).reshape(-1, 4) - [1.0, 1.0, 0.0, 0.0]
    size_array = np.array(sizes, dtype=np.float64).reshape(-1, 2)
    boxes, keep = _sanitize_boxes(raw, size_array[rows], base / "Annotations", split=split)
    labels = np.array([label_of[name] for _, (name, _, _) in objects], dtype=np.int64)
    iscrowd = np.array([int(difficult) for _, (_, difficult, _) in objects], dtype=np.int64)
    per_image = _group_by_image(np.where(keep, rows, -1), len(paths))
    records = []
    for image_id, (path, (height, width)) in enumerate(zip(paths, sizes)):
        index = per_image[image_id]
        box = boxes[index]
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        records.append(_record(path, image_id, height, width, box, labels[index], iscrowd[index], area))
    return DetectionAnnotations(records, class_names, list(range(1, len(class_names) + 1)))


def _voc_base(root: Path, year: str) -> Path:
    """``root/VOC<year>``, or ``root`` itself when it is that folder."""
    for base in (root / f"VOC{year}", root):
        if (base / "Annotations").is_dir():
            return base
    raise DataError(
        f"no VOC{year} data under {root}: found no {root / f'VOC{year}' / 'Annotations'}; expected the layout "
        f"{VOC_LAYOUT}"
    )


VocObject = tuple[str, bool, tuple[float, float, float, float]]  # class name, difficult, (xmin, ymin, xmax, ymax)


def _parse_voc_xml(path: Path) -> tuple[str | None, int, int, list[VocObject]]:
    """``(filename or None, height or 0, width or 0, objects)`` of one VOC annotation file."""
    # xml.etree, since defusedxml is not a dependency: Python's expat (>= 2.4.1, bundled since 3.7.1)
    # refuses entity-expansion bombs, and ElementTree does not fetch external entities.
    try:
        annotation = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"cannot parse the VOC annotation {path}: {exc}") from exc
    try:
        size = annotation.find("size")
        height = int(float(size.findtext("height", "0"))) if size is not None else 0
        width = int(float(size.findtext("width", "0"))) if size is not None else 0
        objects = []
        for obj in annotation.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise ValueError("an <object> without <name>")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise ValueError(f"the {name!r} <object> has no <bndbox>")
            coords = [bndbox.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
            if None in coords:
                raise ValueError(f"the {name!r} <bndbox> needs <xmin>, <ymin>, <xmax> and <ymax>")
            difficult = int(float(obj.findtext("difficult") or 0)) != 0
            objects.append((name, difficult, tuple(float(c) for c in coords)))
    except ValueError as exc:
        raise DataError(f"malformed VOC annotation {path}: {exc}") from exc
    file_name = (annotation.findtext("filename") or "").strip() or None
    return file_name, height, width, objects


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# Shared checks


def _check_images_exist(listed_in: Path, image_dir: Path, file_names: Sequence[str]) -> None:
    if not image_dir.is_dir():
        raise DataError(f"the image folder {image_dir} of {listed_in} does not exist")
    missing = [name for name in file_names if not (image_dir / name).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(file_names)} images listed in {listed_in} are missing from {image_dir}: "
            f"{_listing(missing)}"
        )


def _listing(items: Sequence[str]) -> str:
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _sanitize_boxes(
    boxes: np.ndarray, sizes: np.ndarray, source: Path, split: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy ``boxes`` (N, 4) to their image ``sizes`` (N, 2) = (height, width); mark degenerate ones.

    Returns the clipped boxes and the mask of boxes to keep; warns once with both counts.
    """
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, sizes[:, 1:2])
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, sizes[:, 0:1])
    positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # NaN compares False: dropped
    keep = positive & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    num_dropped = int((~keep).sum())
    num_clipped = int((keep & np.any(clipped != boxes, axis=1)).sum())
    if num_dropped or num_clipped:
        where = f"{source} ({split})" if split else str(source)
        warnings.warn(
            f"{where}: dropped {num_dropped} box(es) with zero or negative width or height or entirely outside "
            f"their image; clipped {num_clipped} box(es) partly outside their image",
            stacklevel=3,
        )
    return clipped, keep


def _group_by_image(rows: np.ndarray, num_images: int) -> list[np.ndarray]:
    """For each image ``0..num_images-1``, the indices of the boxes whose row is it (rows < 0: none), in order."""
    order = np.argsort(rows, kind="stable")
    starts = np.searchsorted(rows[order], np.arange(num_images + 1))
    return [order[starts[i] : starts[i + 1]] for i in range(num_images)]


def _record(
    path: Path, image_id: int, height: int, width: int, boxes: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray,
    area: np.ndarray,
) -> DetectionRecord:
    return DetectionRecord(
        path=path, image_id=int(image_id), height=int(height), width=int(width),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=np.asarray(labels, dtype=np.int64),
        iscrowd=np.asarray(iscrowd, dtype=np.int64), area=np.asarray(area, dtype=np.float32),
    )


# --------------------------------------------------------------------------------------------------
# Dataset


class DetectionDataset(Dataset):
    """``(image, target)`` pairs of ``records``, through an albumentations detection ``transform``.

    Args:
        records: e.g. ``read_coco(...).records``.
        transform: called as ``transform(image=uint8_hwc_rgb, bboxes=xyxy, labels=..., iscrowd=...,
            area=...)`` (see :func:`~vision_tasks.data.transforms.detection_train_transform`); it
            should end in ``ToTensorV2``. Without one, images come as float ``(3, H, W)`` in ``[0, 1]``
            and boxes unchanged.

    Images are read with :func:`~vision_tasks.data.classification.load_rgb` (grayscale, palette and
    RGBA become RGB). Raises :class:`DataError` naming the file if it cannot be read or its size is
    not the one annotated (the boxes would not fit it).
    """

    def __init__(self, records: Sequence[DetectionRecord], transform: Transform | None = None) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.records[index]
        image = load_rgb(record.path)
        height, width = image.shape[:2]
        if (height, width) != (record.height, record.width):
            raise DataError(
                f"image {record.path} is {width}x{height} but its annotation says {record.width}x{record.height}"
            )
        fields = {"labels": record.labels, "iscrowd": record.iscrowd, "area": record.area}
        if self.transform is None:
            tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
            boxes = record.boxes
        else:
            out = self.transform(image=image, bboxes=record.boxes, **fields)
            tensor = out["image"].float()  # albumentations' per-image Normalize computes in float64
            boxes = out["bboxes"]
            fields = {name: out[name] for name in fields}
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(fields["labels"], dtype=np.int64)),
            "iscrowd": torch.as_tensor(np.asarray(fields["iscrowd"], dtype=np.int64)),
            "area": torch.as_tensor(np.asarray(fields["area"], dtype=np.float32)),
            "image_id": record.image_id,
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }
        return tensor, target


def detection_collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack the images of a batch ``(N, 3, H, W)`` and list the targets (their box counts differ)."""
    images, targets = zip(*batch)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"cannot batch images of different sizes {sorted(shapes)}: end the pipeline in a fixed-size resize"
        )
    return torch.stack(images), list(targets)


# --------------------------------------------------------------------------------------------------
# Data modules


class _DetectionDataModule(SplitDataModule):
    """Loaders, pipelines and category bookkeeping shared by the detection data modules.

    Subclasses read a split with :meth:`_read_train` / :meth:`_read_val`.
    """

    collate_fn = staticmethod(detection_collate)

    def __init__(
        self,
        *,
        image_size: int,
        augmentation: str,
        mean: Sequence[float],
        std: Sequence[float],
        normalization: str,
        grayscale: bool,
        batch_size: int,
        num_workers: int,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        # Built now so that a bad augmentation argument fails at construction, not at setup.
        norm = dict(mean=mean, std=std, normalization=normalization, grayscale=grayscale)
        self.train_transform = detection_train_transform(image_size, augmentation=augmentation, **norm)
        self.eval_transform = detection_eval_transform(image_size, **norm)
        self._categories: tuple[list[str], list[int]] | None = None

    def _read_train(self) -> DetectionAnnotations:
        raise NotImplementedError

    def _read_val(self) -> DetectionAnnotations:
        raise NotImplementedError

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        """Class names and category ids before :meth:`setup`, where a subclass can read them cheaply."""
        raise RuntimeError(f"{type(self).__name__}: the classes are known after setup(); call dm.setup('fit') first")

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(self._known_categories()[0])

    @property
    def num_classes(self) -> int:
        """Number of foreground classes."""
        return len(self.class_names)

    @property
    def category_ids(self) -> list[int]:
        """The dataset's own category id of each label."""
        return list(self._known_categories()[1])

    def _known_categories(self) -> tuple[list[str], list[int]]:
        if self._categories is None:
            self._categories = self._peek_categories()
        return self._categories

    def setup(self, stage: str | None = None) -> None:
        """Read and check the splits the ``stage`` needs (train for ``fit``; val always) and build datasets."""
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self._read_train(), self.train_transform, "training")
        if self.val_dataset is None:
            self.val_dataset = self._dataset(self._read_val(), self.eval_transform, "validation")

    def _dataset(self, annotations: DetectionAnnotations, transform: Transform, which: str) -> DetectionDataset:
        found = (annotations.class_names, annotations.category_ids)
        if self._categories is not None and found != self._categories:
            raise DataError(
                f"the {which} categories {list(zip(found[1], found[0]))} differ from those of the other split "
                f"{list(zip(self._categories[1], self._categories[0]))}"
            )
        self._categories = found
        return DetectionDataset(annotations.records, transform)

class CocoDetectionDataModule(_DetectionDataModule):
    """Train/val loaders over a COCO-layout dataset: ``root/annotations/instances_<split>.json``, ``root/<split>/``.

    ``setup`` reads and checks the splits (see :func:`read_coco`) and requires the same categories
    in both; ``test`` and ``predict`` use the val split. ``class_names`` and ``category_ids`` can be
    read before ``setup`` (from the val file's categories); ``val_annotation_file`` is the val
    split's JSON, for COCO evaluation.

    Args:
        root: dataset folder (``~`` is expanded).
        train_split, val_split: split names (``train2017``, ``val2017``).
        image_size: side of the square images fed to the model.
        augmentation: training preset, ``"ssd"``, ``"ssdlite"`` or ``"none"`` (see
            :func:`~vision_tasks.data.transforms.detection_train_transform`).
        mean, std, normalization, grayscale: normalisation, that of the weights being trained.
        batch_size, num_workers: of every loader.
    """

    def __init__(
        self,
        root: str,
        *,
        train_split: str = "train2017",
        val_split: str = "val2017",
        image_size: int = 320,
        augmentation: str = "ssd",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        normalization: str = "standard",
        grayscale: bool = False,
        batch_size: int = 32,
        num_workers: int = 4,
    ) -> None:
        super().__init__(
            image_size=image_size, augmentation=augmentation, mean=mean, std=std, normalization=normalization,
            grayscale=grayscale, batch_size=batch_size, num_workers=num_workers,
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.train_split, self.val_split = train_split, val_split

    def annotation_file(self, split: str) -> Path:
        """``root/annotations/instances_<split>.json``."""
        return self.root / "annotations" / f"instances_{split}.json"

    @property
    def val_annotation_file(self) -> Path:
        """The val split's COCO JSON (what COCO evaluation compares detections with)."""
        return self.annotation_file(self.val_split)

    def _read_train(self) -> DetectionAnnotations:
        return read_coco(self.annotation_file(self.train_split), self.root / self.train_split)

    def _read_val(self) -> DetectionAnnotations:
        return read_coco(self.annotation_file(self.val_split), self.root / self.val_split)

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        path = self.val_annotation_file
        data = _load_json(path)
        if not isinstance(data.get("categories"), list):
            raise DataError(f"{path} is not a COCO instances file: no list 'categories'")
        ids, names = _coco_categories(data["categories"], path)
        return names, ids


class SyntheticDetectionDataModule(GeneratedData, CocoDetectionDataModule):
    """The embedded default: the synthetic shapes set (:func:`generate_detection`), read as COCO.

    The set is generated once, in ``prepare_data`` (Lightning runs it on one process per node), into
    ``root`` or by default into :func:`synthetic_root`, a cache folder named after the generation
    parameters; later runs reuse it. ``synthetic_image_size`` is the size of the stored images,
    ``image_size`` that of the model's input; the other generation arguments are those of
    :func:`generate_detection`. Other keyword arguments go to :class:`CocoDetectionDataModule`.
    Colours are random by construction, so images are turned grey and standardised one by one. The
    defaults are those of ``configs/datamodule/detection/synthetic.yaml``.
    """

    synthetic_task = "detection"

    def __init__(
        self,
        root: str | None = None,
        *,
        num_train: int = 4000,
        num_val: int = 200,
        synthetic_image_size: int = 96,
        min_objects: int = 1,
        max_objects: int = 3,
        min_size: float = 0.25,
        max_size: float = 0.6,
        max_overlap: float = 0.3,
        seed: int = 0,
        clutter: bool = False,
        image_size: int = 96,
        augmentation: str = "flip",
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.25, 0.25, 0.25),
        normalization: str = "image",
        grayscale: bool = True,
        batch_size: int = 16,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        self.generation_params = dict(
            num_train=num_train, num_val=num_val, image_size=synthetic_image_size, min_objects=min_objects,
            max_objects=max_objects, min_size=min_size, max_size=max_size, max_overlap=max_overlap, seed=seed,
            clutter=clutter,
        )
        # A new name, not `root =`: save_hyperparameters() reads this frame's arguments, and should
        # record None (resolved on the machine that loads them), not this machine's cache path.
        resolved = self._synthetic_root(root)
        super().__init__(
            resolved, image_size=image_size, augmentation=augmentation, mean=mean, std=std,
            normalization=normalization, grayscale=grayscale, batch_size=batch_size, num_workers=num_workers, **kwargs,
        )

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        return list(SHAPES), list(range(1, len(SHAPES) + 1))


class VOCDetectionDataModule(_DetectionDataModule):
    """Train/val loaders over Pascal VOC detection splits (``root/VOC<year>/...``, see :func:`read_voc`).

    The usual protocol is the default: train on VOC2007 trainval + VOC2012 trainval, evaluate on
    VOC2007 test. For VOC2012 alone: ``train_sets=[["2012", "train"]], val_set=["2012", "val"]``.
    ``root`` is the folder holding ``VOC2007``/``VOC2012`` (e.g. ``VOCdevkit``). Training sets are
    concatenated, their image ids renumbered ``0..N-1``; ``test`` and ``predict`` use ``val_set``.

    ``val_annotation_file`` (after ``setup``) is the val split converted to COCO JSON for COCO-style
    evaluation, written under :func:`~vision_tasks.data.synthetic.default_data_dir` (never into
    ``root``); its ``difficult`` objects are crowd regions, so detections on them are ignored.

    Args:
        root: folder holding ``VOC<year>`` (or a ``VOC<year>`` folder itself when all sets are of one year).
        train_sets: ``(year, split)`` pairs read for training.
        val_set: the ``(year, split)`` pair for validation and testing.
        class_names: label order (default the 20 :data:`VOC_CLASSES`); your own list for a custom dataset.
        keep_difficult: keep ``difficult`` objects as ``iscrowd=1`` (True) or drop them.
        Other arguments as in :class:`CocoDetectionDataModule`.
    """

    def __init__(
        self,
        root: str,
        *,
        train_sets: Sequence[Sequence[str]] = (("2007", "trainval"), ("2012", "trainval")),
        val_set: Sequence[str] = ("2007", "test"),
        class_names: Sequence[str] = VOC_CLASSES,
        keep_difficult: bool = True,
        image_size: int = 320,
        augmentation: str = "ssd",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        normalization: str = "standard",
        grayscale: bool = False,
        batch_size: int = 32,
        num_workers: int = 4,
    ) -> None:
        super().__init__(
            image_size=image_size, augmentation=augmentation, mean=mean, std=std, normalization=normalization,
            grayscale=grayscale, batch_size=batch_size, num_workers=num_workers,
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.train_sets = [self._year_split(pair, "train_sets") for pair in train_sets]
        if not self.train_sets:
            raise ValueError("train_sets must name at least one (year, split) pair")
        self.val_set = self._year_split(val_set, "val_set")
        self.requested_classes = [str(name) for name in class_names]
        self.keep_difficult = bool(keep_difficult)
        self._val_annotation_file: Path | None = None

    @staticmethod
    def _year_split(pair: Sequence[str], name: str) -> tuple[str, str]:
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"{name} takes (year, split) pairs such as ('2007', 'test'), got {pair!r}")
        return str(pair[0]), str(pair[1])

    def _read(self, year: str, split: str) -> DetectionAnnotations:
        return read_voc(
            self.root, year=year, split=split, class_names=self.requested_classes, keep_difficult=self.keep_difficult
        )

    def _read_train(self) -> DetectionAnnotations:
        parts = [self._read(year, split) for year, split in self.train_sets]
        records = [record for part in parts for record in part.records]
        records = [dataclasses.replace(record, image_id=i) for i, record in enumerate(records)]
        return DetectionAnnotations(records, parts[0].class_names, parts[0].category_ids)

    def _read_val(self) -> DetectionAnnotations:
        annotations = self._read(*self.val_set)
        self._val_annotation_file = _write_coco_cache(annotations, f"VOC{self.val_set[0]}-{self.val_set[1]}")
        return annotations

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        return list(self.requested_classes), list(range(1, len(self.requested_classes) + 1))

    @property
    def val_annotation_file(self) -> Path:
        """The val split as a COCO JSON file in the cache folder (after :meth:`setup`)."""
        if self._val_annotation_file is None:
            raise RuntimeError(
                f"{type(self).__name__}.val_annotation_file is written by setup(); call dm.setup() first"
            )
        return self._val_annotation_file


def _write_coco_cache(annotations: DetectionAnnotations, name: str) -> Path:
    """Write ``annotations.to_coco()`` under ``default_data_dir()/coco-annotations``, named after its content.

    The same content always gives the same file, written once (atomically, so that concurrent
    processes, e.g. one per GPU, do not read half a file).
    """
    text = json.dumps(annotations.to_coco())
    digest = hashlib.sha256(f"{[str(r.path) for r in annotations.records]}\n{text}".encode()).hexdigest()[:12]
    path = default_data_dir() / "coco-annotations" / f"{name}-{digest}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path
