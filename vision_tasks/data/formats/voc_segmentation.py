"""Pascal VOC segmentation (and SBD): ``VOC<year>/{JPEGImages,<masks>,ImageSets/Segmentation/<split>.txt}``.

:func:`read_voc_segmentation` checks what it reads before training and raises :class:`DataError`
naming the file and the reason; the SBD augmented set is ``split="train_aug",
masks="SegmentationClassAug"``. It produces :class:`~vision_tasks.data.formats.masks.SegmentationRecord`
(image, mask) pairs whose sizes have been checked from the file headers.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..common import IMAGE_EXTENSIONS, files_by_stem, listing
from ..errors import DataError
from .masks import SegmentationRecord, check_pairs
from .voc import VOC_SEG_LAYOUT, voc_base

__all__ = ["read_voc_segmentation"]


def read_voc_segmentation(
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    year: str = "2012",
    masks: str = "SegmentationClass",
) -> list[SegmentationRecord]:
    """Read a Pascal VOC segmentation split: the ids of ``VOC<year>/ImageSets/Segmentation/<split>.txt``.

    ``root`` is the folder holding ``VOC<year>`` (e.g. ``VOCdevkit``) or that folder itself. Each id
    gives the image ``JPEGImages/<id>.jpg`` (or ``<id>`` with another of
    :data:`~vision_tasks.data.common.IMAGE_EXTENSIONS` when there is no ``.jpg``) and the mask
    ``<masks>/<id>.png``. The SBD augmented training set (10,582 images) is ``split="train_aug",
    masks="SegmentationClassAug"`` (grayscale masks;
    :func:`~vision_tasks.data.formats.masks.load_mask` reads both kinds). Every image and mask header
    is read to check that their sizes agree (cheap: no pixels are decoded).

    Raises:
        DataError: naming the file: no ``VOC<year>`` folder, a missing or empty split list, missing
            images or masks (a few listed with the count), an unreadable header, a mask of an
            unsupported image mode, or an image and mask of different sizes (both files, both sizes).
    """
    base = voc_base(Path(root).expanduser(), str(year), "segmentation")
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        hint = (
            "; the SBD augmented list train_aug.txt and its SegmentationClassAug masks are distributed "
            "separately from VOC2012"
            if split == "train_aug" or masks == "SegmentationClassAug"
            else ""
        )
        raise DataError(f"VOC segmentation list {list_file} does not exist; expected the layout {VOC_SEG_LAYOUT}{hint}")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"VOC segmentation list {list_file} is empty")
    image_dir, mask_dir = base / "JPEGImages", base / masks
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"the folder {folder} of {list_file} does not exist; expected the layout {VOC_SEG_LAYOUT}")

    image_names = files_by_stem(image_dir, IMAGE_EXTENSIONS, prefer=".jpg")
    mask_names = files_by_stem(mask_dir, (".png",))
    missing_images = [i for i in ids if i not in image_names]
    if missing_images:
        raise DataError(
            f"{len(missing_images)} of the {len(ids)} ids listed in {list_file} have no image in {image_dir} "
            f"(<id>.jpg or another image type): {listing(missing_images)}"
        )
    missing_masks = [i for i in ids if i not in mask_names]
    if missing_masks:
        raise DataError(
            f"{len(missing_masks)} of the {len(ids)} ids listed in {list_file} have no mask <id>.png in {mask_dir}: "
            f"{listing(missing_masks)}"
        )
    records = [SegmentationRecord(image_dir / image_names[i], mask_dir / mask_names[i]) for i in ids]
    check_pairs(records)
    return records
