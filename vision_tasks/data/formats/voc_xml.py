"""Pascal VOC detection XML: ``VOC<year>/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}``.

:func:`read_voc` checks what it reads before training and raises :class:`DataError` naming the file
and the reason; it produces the :class:`~vision_tasks.data.formats.detection.DetectionAnnotations`
that every detection format shares. The pieces it is made of (:func:`parse_voc_xml`,
:func:`voc_labels`, :func:`voc_records`) also serve the flat folder of
:mod:`~vision_tasks.data.formats.voc_folder`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from ..classes import VOC_CLASSES
from ..common import image_size, listing
from ..errors import DataError
from .detection import (
    DetectionAnnotations,
    DetectionRecord,
    check_images_exist,
    detection_record,
    group_by_image,
    sanitize_boxes,
)
from .voc import VOC_LAYOUT, voc_base

__all__ = ["VocObject", "parse_voc_xml", "read_voc", "voc_labels", "voc_records"]

VocObject = tuple[str, bool, tuple[float, float, float, float]]  # class name, difficult, (xmin, ymin, xmax, ymax)


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
    :data:`~vision_tasks.data.classes.VOC_CLASSES` by default; pass your own for a custom dataset in VOC
    format); category ids are ``1..C``. VOC pixel coordinates are 1-based and inclusive: a box becomes
    ``xmin - 1, ymin - 1, xmax, ymax``. ``difficult`` objects are kept with ``iscrowd=1`` (ignored in
    evaluation, as VOC does, and in training matches) or dropped with ``keep_difficult=False``. ``area``
    is the box's. The image is the XML's ``<filename>`` in ``JPEGImages`` (``<id>.jpg`` if absent); its
    size the XML's ``<size>`` (the image header's if absent). ``image_id`` is the index in the split
    list.

    Raises:
        DataError: naming the file: a missing folder, split list, XML file or image (images are
            checked up front, a few listed with the count); malformed XML or a missing field; an
            object of a class not in ``class_names`` (the classes, one file each, and the list).
    """
    class_names = [str(name) for name in class_names]
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and without repeats, got {class_names}")
    base = voc_base(Path(root).expanduser(), str(year), "detection")
    split_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"VOC split list {split_file} does not exist; expected the layout {VOC_LAYOUT}")
    names = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"VOC split list {split_file} is empty")
    xml_files = [base / "Annotations" / f"{name}.xml" for name in names]
    missing = [str(p) for p in xml_files if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} annotation file(s) listed in {split_file} are missing: {listing(missing)}")

    parsed = [parse_voc_xml(path) for path in xml_files]
    label_of = voc_labels(xml_files, [objects for _, _, _, objects in parsed], class_names)
    paths = [base / "JPEGImages" / (file_name or f"{name}.jpg") for name, (file_name, _, _, _) in zip(names, parsed)]
    check_images_exist(split_file, base / "JPEGImages", [str(p.relative_to(base / "JPEGImages")) for p in paths])
    sizes = [
        (height, width) if height and width else image_size(path)
        for path, (_, height, width, _) in zip(paths, parsed)
    ]
    records = voc_records(
        paths, [objects for _, _, _, objects in parsed], sizes, label_of, keep_difficult=keep_difficult,
        source=base / "Annotations", split=split,
    )
    return DetectionAnnotations(records, class_names, list(range(1, len(class_names) + 1)))


def voc_labels(
    xml_files: Sequence[Path], objects: Sequence[Sequence[VocObject]], class_names: Sequence[str]
) -> dict[str, int]:
    """``class name -> label`` (its index in ``class_names``), after checking every object's class is one of them.

    Raises:
        DataError: the unknown classes, each with the first file naming it, and ``class_names``.
    """
    label_of = {name: label for label, name in enumerate(class_names)}
    unknown: dict[str, Path] = {}
    for path, objs in zip(xml_files, objects):
        for name, _, _ in objs:
            if name not in label_of:
                unknown.setdefault(name, path)
    if unknown:
        found = "; ".join(f"{name!r} in {path}" for name, path in unknown.items())
        raise DataError(f"VOC objects of classes not in class_names: {found}; class_names is {list(class_names)}")
    return label_of


def voc_records(
    paths: Sequence[Path],
    objects: Sequence[Sequence[VocObject]],
    sizes: Sequence[tuple[int, int]],
    label_of: dict[str, int],
    *,
    keep_difficult: bool,
    source: Path,
    split: str | None = None,
    image_ids: Sequence[int] | None = None,
) -> list[DetectionRecord]:
    """One record per image ``paths[i]`` of ``sizes[i]`` = (height, width) with its VOC ``objects[i]``.

    VOC boxes are 1-based and inclusive: ``xmin - 1, ymin - 1, xmax, ymax`` in continuous pixels. Boxes
    partly outside their image are clipped, degenerate ones dropped (one warning naming ``source`` and
    ``split``); ``difficult`` objects become ``iscrowd=1`` or are dropped (``keep_difficult=False``).
    ``area`` is the clipped box's; ``image_id`` is ``image_ids[i]`` (default ``i``).
    """
    flat = [(row, obj) for row, objs in enumerate(objects) for obj in objs if keep_difficult or not obj[1]]
    rows = np.array([row for row, _ in flat], dtype=np.int64)
    raw = np.array([box for _, (_, _, box) in flat], dtype=np.float64).reshape(-1, 4) - [1.0, 1.0, 0.0, 0.0]
    size_array = np.array(sizes, dtype=np.float64).reshape(-1, 2)
    boxes, keep = sanitize_boxes(raw, size_array[rows], source, split=split)
    labels = np.array([label_of[name] for _, (name, _, _) in flat], dtype=np.int64)
    iscrowd = np.array([int(difficult) for _, (_, difficult, _) in flat], dtype=np.int64)
    per_image = group_by_image(np.where(keep, rows, -1), len(paths))
    records = []
    for row, (path, (height, width)) in enumerate(zip(paths, sizes)):
        index = per_image[row]
        box = boxes[index]
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        image_id = row if image_ids is None else image_ids[row]
        records.append(detection_record(path, image_id, height, width, box, labels[index], iscrowd[index], area))
    return records


def parse_voc_xml(path: Path) -> tuple[str | None, int, int, list[VocObject]]:
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
