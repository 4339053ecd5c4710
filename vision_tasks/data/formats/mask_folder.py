"""Custom segmentation data: a folder of images and a folder of same-named PNG class masks.

:func:`read_segmentation_folder` checks what it reads before training and raises :class:`DataError`
naming the folder or files and the reason. It produces
:class:`~vision_tasks.data.formats.masks.SegmentationRecord` (image, mask) pairs whose sizes have
been checked from the file headers.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..common import IMAGE_EXTENSIONS, files_by_stem, listing
from ..errors import DataError
from .masks import SegmentationRecord, check_pairs

__all__ = ["read_segmentation_folder"]


def read_segmentation_folder(
    root: str | os.PathLike[str],
    split: str,
    *,
    images: str = "images/{split}",
    masks: str = "masks/{split}",
) -> list[SegmentationRecord]:
    """Read a custom segmentation split: every mask ``root/<masks>/<stem>.png`` with the image of that stem.

    ``images`` and ``masks`` are folders relative to ``root`` in which ``{split}`` is replaced by
    ``split``; images are files of :data:`~vision_tasks.data.common.IMAGE_EXTENSIONS` (any
    case) directly in their folder. Images without a mask are skipped (counted in a warning: a set
    may label only some images); records are sorted by stem. Image and mask sizes are checked from
    the headers. Example, the 100 labelled coco128 val images::

        read_segmentation_folder("coco128", "val2017", images="{split}", masks="voc21_masks/{split}")

    Raises:
        DataError: naming the folder or files: a missing folder, no masks (with the expected layout),
            masks without an image or with two (listed with the count), an unreadable header, an
            unsupported mask mode, or an image and mask of different sizes.
    """
    root = Path(root).expanduser()
    image_dir = root / images.format(split=split)
    mask_dir = root / masks.format(split=split)
    layout = f"{root}/{images.format(split=split)}/<name>.jpg with masks {root}/{masks.format(split=split)}/<name>.png"
    if not mask_dir.is_dir():
        raise DataError(f"mask folder {mask_dir} does not exist; expected the layout {layout}")
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} does not exist; expected the layout {layout}")
    mask_names = files_by_stem(mask_dir, (".png",))
    if not mask_names:
        raise DataError(f"mask folder {mask_dir} holds no .png masks; expected the layout {layout}")
    image_names = files_by_stem(image_dir, IMAGE_EXTENSIONS, ambiguous="error")
    orphans = sorted(stem for stem in mask_names if stem not in image_names)
    if orphans:
        raise DataError(
            f"{len(orphans)} of the {len(mask_names)} masks in {mask_dir} have no image of the same name in "
            f"{image_dir}: {listing([mask_names[stem] for stem in orphans])}"
        )
    unlabelled = sorted(stem for stem in image_names if stem not in mask_names)
    if unlabelled:
        warnings.warn(
            f"{image_dir}: skipped {len(unlabelled)} of {len(image_names)} image(s) without a mask in {mask_dir}, "
            f"e.g. {image_names[unlabelled[0]]}",
            stacklevel=2,
        )
    stems = sorted(mask_names)
    records = [SegmentationRecord(image_dir / image_names[stem], mask_dir / mask_names[stem]) for stem in stems]
    check_pairs(records)
    return records
