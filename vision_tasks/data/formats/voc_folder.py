"""A flat folder of images with Pascal VOC XML files: what labelling tools export, without ``ImageSets``.

``root/*.jpg`` with ``root/*.xml`` beside them, or ``root/images/*.jpg`` with ``root/annotations/*.xml``
(any two folders: ``images``, ``annotations``). An image and its XML file share a stem. The split is two
lists of stems (or file names), or a seeded fraction of the images drawn for validation.

:func:`read_voc_folder` checks what it reads before training and raises :class:`DataError` naming the
file and the reason; it parses the XML files as :func:`~vision_tasks.data.formats.voc_xml.read_voc`
does (same conventions) and returns the train and val
:class:`~vision_tasks.data.formats.detection.DetectionAnnotations`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path, PurePath
from typing import Sequence

from ..common import IMAGE_EXTENSIONS, MAX_LISTED, files_by_stem, image_sizes, listing
from ..errors import DataError
from .detection import DetectionAnnotations
from .voc_xml import VocObject, parse_voc_xml, voc_labels, voc_records

__all__ = ["VOC_FOLDER_LAYOUT", "read_voc_folder", "split_by_fraction"]

VOC_FOLDER_LAYOUT = (
    "root/<name>.jpg with root/<name>.xml beside them, or root/images/<name>.jpg with root/annotations/<name>.xml"
)

# Where the images and the XML files are looked for when not given, in this order (relative to root).
_IMAGE_FOLDERS = (".", "images", "JPEGImages")
_XML_FOLDERS = ("annotations", "Annotations")

StemList = str | os.PathLike[str] | Sequence[str]


def read_voc_folder(
    root: str | os.PathLike[str],
    *,
    images: str | None = None,
    annotations: str | None = None,
    train_list: StemList | None = None,
    val_list: StemList | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    class_names: Sequence[str] | None = None,
    keep_difficult: bool = True,
    keep_unannotated: bool = False,
) -> dict[str, DetectionAnnotations]:
    """Read a flat VOC folder and split it: ``{"train": ..., "val": ...}``.

    Args:
        root: the dataset folder (``~`` is expanded).
        images: folder of the images, relative to ``root`` (``"."``: ``root`` itself). None: the first of
            ``root``, ``root/images``, ``root/JPEGImages`` that holds images (directly, not in sub-folders).
        annotations: folder of the XML files, relative to ``root``. None: the image folder if it holds
            ``.xml`` files, else ``root/annotations`` or ``root/Annotations``.
        train_list, val_list: both or neither. Each is a text file (one stem or file name per line; a
            relative path is looked for in ``root``, then in the working directory) or a list of stems or
            file names. Annotated images in neither list are left out (counted in a warning).
        val_fraction, split_seed: without lists, ``round(val_fraction * N)`` of the N images (at least one,
            and at least one left for training) go to validation: those whose digest of
            ``(split_seed, stem)`` is smallest, so the split does not depend on the file system's order,
            and adding images moves few others.
        class_names: label order. None: the sorted set of the class names in the XML files of both
            splits, with a warning that this order is implicit (a new class shifts the labels after it).
        keep_difficult: keep ``difficult`` objects as ``iscrowd=1`` (ignored by evaluation) or drop them.
        keep_unannotated: keep images without an XML file as negatives (no boxes); by default they are
            skipped, counted in a warning.

    Boxes follow Pascal VOC's conventions (:func:`~vision_tasks.data.formats.voc_xml.voc_records`: 1-based
    inclusive pixels, clipped to the image, degenerate boxes dropped, both counted in a warning). Every
    image header is read up front (threaded): its size is the record's, and must agree with the XML's
    ``<size>`` where that is given. Category ids are ``1..C``; ``image_id`` is the image's index among the
    images of both splits, sorted by stem; records are sorted by stem.

    Raises:
        DataError: naming the folder or file: a missing folder, no images or no XML files, an XML file
            without an image or two images of one stem, a malformed XML file, an unknown class, an
            unreadable image or one whose size differs from its XML's, a list entry that is no
            (annotated) image of the folder (file and line) or in both lists.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"VOC folder {root} does not exist or is not a folder; expected the layout {VOC_FOLDER_LAYOUT}")
    image_dir, xml_dir = _folders(root, images, annotations)
    image_names, xml_names = _paired_files(image_dir, xml_dir, keep_unannotated)
    available = sorted(image_names) if keep_unannotated else sorted(xml_names)
    if (train_list is None) != (val_list is None):
        raise ValueError("give both train_list and val_list, or neither (then val_fraction splits the folder)")
    if train_list is not None:
        train, val = _split_by_lists(train_list, val_list, root, available, set(image_names) - set(available))
    else:
        train, val = split_by_fraction(available, val_fraction, split_seed, where=str(root))

    used = sorted({*train, *val})
    parsed = {stem: parse_voc_xml(xml_dir / xml_names[stem]) for stem in used if stem in xml_names}
    if class_names is None:
        found = sorted({name for _, _, _, objects in parsed.values() for name, _, _ in objects})
        if not found:
            raise DataError(f"the XML files in {xml_dir} hold no objects, so there are no classes to learn")
        warnings.warn(
            f"{xml_dir}: class_names not given, so the labels are the {len(found)} class names found in the XML "
            f"files, sorted: {found}. This order is implicit: a new class name shifts the labels after it, and "
            "with them what a trained model's outputs mean; set class_names (data.class_names=[...]) to fix it",
            stacklevel=2,
        )
        class_names = found
    class_names = [str(name) for name in class_names]
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and without repeats, got {class_names}")
    label_of = voc_labels(
        [xml_dir / xml_names[stem] for stem in parsed], [objects for _, _, _, objects in parsed.values()], class_names
    )

    paths = {stem: image_dir / image_names[stem] for stem in used}
    sizes = dict(zip(used, image_sizes([paths[stem] for stem in used])))
    wrong = [
        f"{xml_dir / xml_names[stem]} says {width}x{height}, {paths[stem]} is {sizes[stem][1]}x{sizes[stem][0]}"
        for stem, (_, height, width, _) in parsed.items()
        if height and width and (height, width) != sizes[stem]
    ]
    if wrong:
        raise DataError(f"{len(wrong)} VOC annotation(s) give a size other than their image's: {listing(wrong)}")

    image_id = {stem: index for index, stem in enumerate(used)}
    splits = {}
    for split, stems in (("train", train), ("val", val)):
        objects: list[list[VocObject]] = [parsed[stem][3] if stem in parsed else [] for stem in stems]
        records = voc_records(
            [paths[stem] for stem in stems], objects, [sizes[stem] for stem in stems], label_of,
            keep_difficult=keep_difficult, source=xml_dir, split=split, image_ids=[image_id[stem] for stem in stems],
        )
        splits[split] = DetectionAnnotations(records, list(class_names), list(range(1, len(class_names) + 1)))
    return splits


def split_by_fraction(
    stems: Sequence[str], val_fraction: float, seed: int, *, where: str = ""
) -> tuple[list[str], list[str]]:
    """``(train, val)`` stems, sorted: the ``round(val_fraction * N)`` stems of smallest digest of ``(seed, stem)``.

    Deterministic and independent of the order of ``stems``; at least one stem in each part.
    """
    if isinstance(val_fraction, bool) or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    stems = sorted(set(stems))
    if len(stems) < 2:
        raise DataError(f"{where}: {len(stems)} usable image(s): a train/val split needs at least two")
    num_val = min(len(stems) - 1, max(1, round(float(val_fraction) * len(stems))))
    order = sorted(stems, key=lambda stem: hashlib.sha256(f"{int(seed)}\0{stem}".encode()).digest())
    return sorted(order[num_val:]), sorted(order[:num_val])


def _folders(root: Path, images: str | None, annotations: str | None) -> tuple[Path, Path]:
    """The image folder and the XML folder (see :func:`read_voc_folder`)."""
    if images is not None:
        image_dir = root / images
        if not image_dir.is_dir():
            raise DataError(f"image folder {image_dir} does not exist; expected the layout {VOC_FOLDER_LAYOUT}")
    else:
        candidates = [root / name for name in _IMAGE_FOLDERS]
        image_dir = next((folder for folder in candidates if _stems_or_none(folder, IMAGE_EXTENSIONS)), None)
        if image_dir is None:
            raise DataError(
                f"found no images in {', '.join(str(c) for c in candidates)}; expected the layout {VOC_FOLDER_LAYOUT} "
                "(or set images and annotations)"
            )
    if annotations is not None:
        xml_dir = root / annotations
        if not xml_dir.is_dir():
            raise DataError(f"annotation folder {xml_dir} does not exist; expected the layout {VOC_FOLDER_LAYOUT}")
    else:
        candidates = [image_dir, *(root / name for name in _XML_FOLDERS)]
        xml_dir = next((folder for folder in candidates if _stems_or_none(folder, (".xml",))), None)
        if xml_dir is None:
            raise DataError(
                f"found no .xml files in {', '.join(str(c) for c in candidates)}; expected the layout "
                f"{VOC_FOLDER_LAYOUT} (or set annotations)"
            )
    return image_dir, xml_dir


def _paired_files(image_dir: Path, xml_dir: Path, keep_unannotated: bool) -> tuple[dict[str, str], dict[str, str]]:
    """``stem -> file name`` of the images and of the XML files; every XML file has its image."""
    image_names = files_by_stem(image_dir, IMAGE_EXTENSIONS, ambiguous="error")
    xml_names = files_by_stem(xml_dir, (".xml",))
    if not xml_names:
        raise DataError(f"{xml_dir} holds no .xml annotation files; expected the layout {VOC_FOLDER_LAYOUT}")
    orphans = sorted(stem for stem in xml_names if stem not in image_names)
    if orphans:
        raise DataError(
            f"{len(orphans)} of the {len(xml_names)} VOC annotation files in {xml_dir} have no image of the same name "
            f"in {image_dir}: {listing([xml_names[stem] for stem in orphans])}"
        )
    unannotated = sorted(stem for stem in image_names if stem not in xml_names)
    if unannotated and not keep_unannotated:
        warnings.warn(
            f"{image_dir}: skipped {len(unannotated)} of {len(image_names)} image(s) without an XML file in {xml_dir}, "
            f"e.g. {image_names[unannotated[0]]}; keep_unannotated=True (data.keep_unannotated=true) keeps them as "
            "negatives",
            stacklevel=3,
        )
    return image_names, xml_names


def _split_by_lists(
    train_list: StemList, val_list: StemList, root: Path, available: list[str], skipped: set[str]
) -> tuple[list[str], list[str]]:
    """The sorted stems that ``train_list`` and ``val_list`` name: disjoint, each one of ``available``."""
    train, val = (
        _read_list(entries, name, root, set(available), skipped)
        for entries, name in ((train_list, "train_list"), (val_list, "val_list"))
    )
    both = sorted(set(train) & set(val))
    if both:
        raise DataError(f"{len(both)} image(s) are in both train_list and val_list: {listing(both)}")
    if not train or not val:
        raise DataError(f"{root}: {'train_list' if not train else 'val_list'} lists no image")
    left_out = len(available) - len(train) - len(val)
    if left_out:
        warnings.warn(
            f"{root}: {left_out} of {len(available)} image(s) are in neither train_list nor val_list and are not used",
            stacklevel=3,
        )
    return train, val


def _stems_or_none(folder: Path, extensions: Sequence[str]) -> dict[str, str]:
    return files_by_stem(folder, extensions) if folder.is_dir() else {}


def _read_list(entries: StemList, name: str, root: Path, available: set[str], skipped: set[str]) -> list[str]:
    """The stems of a split list (a text file or a list of stems / file names), each checked against the folder."""
    if isinstance(entries, (str, os.PathLike)):
        path = Path(entries).expanduser()
        path = next((p for p in (root / path, path) if p.is_file()), None) if not path.is_absolute() else path
        if path is None or not path.is_file():
            tried = entries if Path(entries).is_absolute() else f"{root / entries} or {Path(entries).resolve()}"
            raise DataError(f"{name} {tried} does not exist")
        text = path.read_text(encoding="utf-8-sig")
        lines = [(f"{path}, line {number}", line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    else:
        lines = [(f"{name}[{index}]", str(entry).strip()) for index, entry in enumerate(entries)]
    stems, problems = [], []
    for where, entry in lines:
        if not entry or entry.startswith("#"):
            continue
        stem = PurePath(entry).name
        if os.path.splitext(stem)[1].lower() in (*IMAGE_EXTENSIONS, ".xml"):
            stem = os.path.splitext(stem)[0]
        if stem in available:
            stems.append(stem)
        elif stem in skipped:
            problems.append(f"{where}: {entry!r} has no XML file (keep_unannotated=True keeps it as a negative)")
        else:
            problems.append(f"{where}: {entry!r} is not an image of the folder")
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        listed = "\n  ".join(problems[:MAX_LISTED])
        raise DataError(f"{len(problems)} entries of {name} name no usable image of {root}:\n  {listed}{more}")
    return sorted(set(stems))
