"""YOLO txt labels, the export format of most labelling tools (Ultralytics, Roboflow, CVAT, Label Studio).

``root/images/<split>/*.jpg`` with ``root/labels/<split>/<stem>.txt``: one line per object,
``class x_center y_center width height``, the coordinates fractions of the image's width and height. The
class names are in a ``data.yaml`` (Ultralytics: ``names`` as a list or an ``{index: name}`` mapping;
``path``, ``train``, ``val`` give the image folders) or given by the caller. The label folder of an image
folder is the image folder with its last ``images`` component replaced by ``labels`` (Ultralytics' rule:
``train/images`` -> ``train/labels`` in Roboflow's layout too), or the image folder itself without one.

:func:`read_yolo` checks every label line and image header before training and raises :class:`DataError`
naming the file and the line; it produces the
:class:`~vision_tasks.data.formats.detection.DetectionAnnotations` that every detection format shares
(boxes in pixels of the image on disk, category ids ``1..C``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ..common import UNREADABLE, check_each, list_images, listing, read_header
from ..errors import DataError
from .detection import DetectionAnnotations, detection_record, group_by_image, sanitize_boxes

__all__ = ["TOLERANCE", "YOLO_LAYOUT", "YoloSplit", "read_yolo", "yolo_class_names", "yolo_split"]

YOLO_LAYOUT = (
    "root/images/<split>/<name>.jpg with root/labels/<split>/<name>.txt (one 'class x_center y_center width height' "
    "line per object, fractions of the image size) and the class names in root/data.yaml"
)

# How far a normalised coordinate may pass 0 or 1 (and is clipped, counted in the reader's warning); beyond
# it the line is refused. Overshoots below _NOISE are the float rounding of the text, and go unremarked.
TOLERANCE = 1e-6
_NOISE = 1e-9

_YAML_NAMES = ("data.yaml", "data.yml")


@dataclasses.dataclass(frozen=True)
class YoloSplit:
    """Where one split lives: its image and label folders, and the class names (with where they come from)."""

    image_dir: Path
    label_dir: Path
    class_names: list[str]
    names_source: str


def read_yolo(
    root: str | os.PathLike[str], split: str = "train", *, class_names: Sequence[str] | None = None
) -> DetectionAnnotations:
    """Read one split of a YOLO dataset (see :func:`yolo_split` for where it is found).

    Every image of the split's folder (recursively, sorted) is a record; its label file is the same
    relative path under the label folder with ``.txt``; an image without one, or with an empty one, is a
    negative. Boxes are converted to pixels with the size read from the image header (threaded); edges
    past 0 or 1 by at most :data:`TOLERANCE` are clipped and boxes of zero width or height dropped, both
    counted in one warning. Category ids are ``1..C`` (label ``i`` is ``class_names[i]``), ``iscrowd`` 0,
    ``area`` the box's; ``image_id`` is the index in the split's sorted image list.

    Raises:
        DataError: naming the file, and the line for a label line: a missing folder or ``data.yaml``
            entry, a ``data.yaml`` without ``names`` (and no ``class_names``), no images, a label file
            without an image, an unreadable image; a line without 5 fields (a segmentation polygon is
            named as such), a class that is not an integer or not one of the names, a value that is not a
            finite number, a negative width or height, a box outside the image.
    """
    found = yolo_split(root, split, class_names=class_names)
    image_dir, label_dir = found.image_dir, found.label_dir
    images, _ = list_images(image_dir)
    if not images:
        raise DataError(f"the image folder {image_dir} of split {split!r} holds no images; expected {YOLO_LAYOUT}")
    if not label_dir.is_dir():
        raise DataError(
            f"the label folder {label_dir} of {image_dir} does not exist (the image folder with its last 'images' "
            f"replaced by 'labels'); expected {YOLO_LAYOUT}"
        )
    label_of_image = [(label_dir / image.relative_to(image_dir)).with_suffix(".txt") for image in images]
    _check_label_files(images, label_of_image, image_dir, label_dir)

    num_classes = len(found.class_names)
    results: dict[int, tuple[tuple[int, int], np.ndarray]] = {}

    def problem(index: int) -> str | None:
        image, label = images[index], label_of_image[index]
        try:
            width, height, _ = read_header(image)
        except UNREADABLE as exc:
            return f"{image}: cannot read the image: {exc}"
        if width < 1 or height < 1:
            return f"{image}: empty image ({width}x{height})"
        try:
            rows = _parse_label(label, num_classes, found.names_source) if label.is_file() else np.zeros((0, 5))
        except DataError as exc:
            return str(exc)
        results[index] = ((height, width), rows)
        return None

    where = f"split {split!r} ({image_dir})".replace("{", "{{").replace("}", "}}")  # the headline is formatted
    headline = "{count} of the {total} images of " + where + " are unreadable or have a bad label file"
    check_each(range(len(images)), problem, headline)

    sizes = np.array([results[i][0] for i in range(len(images))], dtype=np.float64).reshape(-1, 2)
    parsed = [results[i][1] for i in range(len(images))]
    rows = np.repeat(np.arange(len(parsed), dtype=np.int64), [len(p) for p in parsed])
    table = np.concatenate(parsed)
    scale = sizes[rows][:, [1, 0, 1, 0]]  # (width, height, width, height) of each box's image
    boxes, keep = sanitize_boxes(table[:, 1:] * scale, sizes[rows], label_dir, split=split)
    labels = table[:, 0].astype(np.int64)
    per_image = group_by_image(np.where(keep, rows, -1), len(images))
    records = []
    for image_id, path in enumerate(images):
        index = per_image[image_id]
        (height, width), box = results[image_id][0], boxes[index]
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        crowd = np.zeros(len(index), dtype=np.int64)
        records.append(detection_record(path, image_id, height, width, box, labels[index], crowd, area))
    names = list(found.class_names)
    return DetectionAnnotations(records, names, list(range(1, len(names) + 1)))


def yolo_class_names(root: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> list[str]:
    """The class names of a YOLO dataset: ``class_names`` if given, else its ``data.yaml``'s ``names`` (cheap)."""
    root = _existing(root)
    return _class_names(root, *_load_yaml(root), class_names)[0]


def yolo_split(root: str | os.PathLike[str], split: str, *, class_names: Sequence[str] | None = None) -> YoloSplit:
    """Find a split of a YOLO dataset and its class names.

    ``root`` is the dataset folder or its ``data.yaml`` (``root/data.yaml`` is used when present). With a
    ``data.yaml`` that has a ``split`` key (``train``, ``val``, ``test``), its value is the split's image
    folder, relative to the yaml's ``path`` (itself relative to the yaml's folder, or the working
    directory) or to the yaml's folder; Roboflow's ``../train/images`` is also looked for without the
    ``../``. Otherwise the image folder is ``root/images/<split>``. Class names are ``class_names``, else
    the yaml's ``names`` (a list, or a mapping ``0..C-1 -> name``; ``nc`` must agree).
    """
    root = _existing(root)
    yaml_file, data = _load_yaml(root)
    names, source = _class_names(root, yaml_file, data, class_names)
    if yaml_file is not None and data.get(split):
        image_dir = _yaml_folder(data, yaml_file, split)
    else:
        base = yaml_file.parent if yaml_file is not None else root
        image_dir = base / "images" / split
        if not image_dir.is_dir():
            keys = f" and {yaml_file} has no {split!r} key" if yaml_file is not None else ""
            raise DataError(
                f"the image folder {image_dir} of split {split!r} does not exist{keys}; expected {YOLO_LAYOUT}"
            )
    parts = image_dir.parts
    if "images" in parts:
        last = len(parts) - 1 - parts[::-1].index("images")
        label_dir = Path(*parts[:last], "labels", *parts[last + 1 :])
    else:
        label_dir = image_dir
    return YoloSplit(image_dir, label_dir, names, source)


# --------------------------------------------------------------------------------------------------
# data.yaml


def _existing(root: str | os.PathLike[str]) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"YOLO dataset {root} does not exist; expected the layout {YOLO_LAYOUT}")
    return root


def _load_yaml(root: Path) -> tuple[Path | None, dict[str, Any]]:
    """The dataset's yaml file (``root`` itself if it is a file, else ``root/data.yaml``) and its content."""
    if root.is_file():
        path = root
    else:
        path = next((root / name for name in _YAML_NAMES if (root / name).is_file()), None)
        if path is None:
            return None, {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read the dataset file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a YOLO dataset file: expected a mapping with 'names', 'train', 'val'")
    return path, data


def _class_names(
    root: Path, yaml_file: Path | None, data: dict[str, Any], class_names: Sequence[str] | None
) -> tuple[list[str], str]:
    """The class names and where they come from: ``class_names`` if given, else the yaml's ``names``."""
    if class_names is not None:
        return _checked_names(class_names, "class_names"), "class_names"
    if yaml_file is None:
        raise DataError(
            f"{root} has no data.yaml with the class names: add one (names: [cat, dog, ...]) or pass class_names "
            "(data.class_names=[cat,dog,...]) in label order"
        )
    return _yaml_names(data, yaml_file)


def _yaml_names(data: dict[str, Any], path: Path) -> tuple[list[str], str]:
    names = data.get("names")
    if names is None:
        raise DataError(
            f"{path} has no 'names' (the class names, a list or a mapping 0: name, 1: name, ...); add them or pass "
            "class_names (data.class_names=[...]) in label order"
        )
    if isinstance(names, dict):
        try:
            indexed = {int(str(key)): value for key, value in names.items()}
        except ValueError:
            raise DataError(
                f"{path}: the keys of 'names' must be the class indices 0, 1, ..., got {list(names)}"
            ) from None
        if sorted(indexed) != list(range(len(indexed))):
            raise DataError(f"{path}: the keys of 'names' must be 0..{len(indexed) - 1}, got {sorted(indexed)}")
        names = [indexed[i] for i in range(len(indexed))]
    elif not isinstance(names, list):
        raise DataError(f"{path}: 'names' must be a list or a mapping index -> name, got {names!r}")
    source = f"the names of {path}"
    checked = _checked_names(names, source)
    if "nc" in data and data["nc"] != len(checked):
        raise DataError(f"{path}: nc is {data['nc']!r} but 'names' has {len(checked)} names")
    return checked, source


def _checked_names(names: Sequence[Any], source: str) -> list[str]:
    if isinstance(names, str):
        raise DataError(f"{source} must be a list of class names, got the string {names!r}")
    checked = [str(name) for name in names]
    if not checked or any(not name.strip() for name in checked) or len(set(checked)) != len(checked):
        raise DataError(f"{source} must be non-empty, distinct class names, got {checked}")
    return checked


def _yaml_folder(data: dict[str, Any], path: Path, split: str) -> Path:
    """The image folder that ``data[split]`` names (see :func:`yolo_split`)."""
    value = data[split]
    if not isinstance(value, str) or value.endswith(".txt"):
        raise DataError(
            f"{path}: {split}: {value!r} is not an image folder; this reader takes one folder of images per split "
            "(not a list of folders or a text file of image paths)"
        )
    here = path.parent
    bases = [here]
    if data.get("path"):
        given = Path(str(data["path"])).expanduser()
        bases = [given, here] if given.is_absolute() else [here / given, Path.cwd() / given, here]
    tails = [Path(value)]
    if value.startswith("../"):
        tails.append(Path(value[3:]))  # Roboflow writes ../train/images for a yaml beside train/
    tried = list(dict.fromkeys(base / tail for base in bases for tail in tails))
    for folder in tried:
        if folder.is_dir():
            return folder
    raise DataError(
        f"{path}: the image folder of {split!r} ({value!r}) does not exist; looked for {', '.join(map(str, tried))}"
    )


# --------------------------------------------------------------------------------------------------
# Label files


def _check_label_files(images: list[Path], labels: list[Path], image_dir: Path, label_dir: Path) -> None:
    """Every label file has an image, and no two images share a label file."""
    seen: dict[Path, Path] = {}
    clashes = []
    for image, label in zip(images, labels):
        if label in seen:
            clashes.append(f"{seen[label].name} / {image.name}")
        seen[label] = image
    if clashes:
        raise DataError(
            f"{image_dir}: images of the same name share one label file, which is ambiguous: {listing(clashes)}"
        )
    found = sorted(p for p in label_dir.rglob("*.txt") if not p.name.startswith("."))
    # classes.txt: the class list that LabelImg and CVAT write beside the labels (no image's labels)
    orphans = [p for p in found if p not in seen and p != label_dir / "classes.txt"]
    if orphans:
        raise DataError(
            f"{len(orphans)} label file(s) in {label_dir} have no image of the same name in {image_dir}: "
            f"{listing([str(p.relative_to(label_dir)) for p in orphans])}"
        )


def _parse_label(path: Path, num_classes: int, names_source: str) -> np.ndarray:
    """``(K, 5)`` float64 rows ``label, x0, y0, x1, y1`` (fractions of the image) of one label file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the label file: {exc}") from exc
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        if len(fields) != 5:
            if len(fields) >= 7 and len(fields) % 2 == 1:
                raise DataError(
                    f"{where}: {len(fields)} fields, a segmentation polygon (class x1 y1 x2 y2 ...): a polygon is not "
                    "a box; this reader takes YOLO detection labels, 5 fields 'class x_center y_center width height' "
                    "(export the dataset as YOLO detection, or convert the polygons to their boxes)"
                )
            raise DataError(f"{where}: {len(fields)} fields, expected 5: class x_center y_center width height")
        try:
            label = int(fields[0])
        except ValueError:
            raise DataError(f"{where}: the class {fields[0]!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise DataError(f"{where}: class {label} is not one of the {num_classes} classes 0..{num_classes - 1} "
                            f"({names_source})")
        values = []
        for field in fields[1:]:
            try:
                value = float(field)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(f"{where}: {field!r} is not a finite number")
            values.append(value)
        x, y, w, h = values
        if w < 0 or h < 0:
            raise DataError(f"{where}: negative {'width' if w < 0 else 'height'} ({w if w < 0 else h})")
        edges = [x - w / 2, y - h / 2, x + w / 2, y + h / 2]
        if any(not -TOLERANCE <= v <= 1 + TOLERANCE for v in (x, y, *edges)):
            raise DataError(
                f"{where}: box outside the image: x {edges[0]:.6g}..{edges[2]:.6g}, y {edges[1]:.6g}..{edges[3]:.6g}; "
                "YOLO coordinates are fractions of the image's width and height, in [0, 1] (pixels?)"
            )
        rows.append([label, *(min(max(v, 0.0), 1.0) if -_NOISE <= v <= 1 + _NOISE else v for v in edges)])
    return np.array(rows, dtype=np.float64).reshape(-1, 5)
