"""Class masks and (image, mask) pairs: the records, the checks, the dataset and the batching.

Masks hold class indices, 0 the background, :data:`~vision_tasks.data.common.IGNORE_INDEX` (255)
for pixels no loss or metric counts (VOC's "void" border). :func:`load_mask` reads palette PNGs (VOC
``SegmentationClass``), grayscale PNGs (``SegmentationClassAug``, most custom sets) and colour PNGs
(masks saved as colours are mapped back through the VOC colour map), and refuses values outside the
classes on every load, so that a bad mask fails with its file name instead of a device-side assert
in the loss.

The readers (:func:`~vision_tasks.data.formats.voc_segmentation.read_voc_segmentation`,
:func:`~vision_tasks.data.formats.mask_folder.read_segmentation_folder`) produce
:class:`SegmentationRecord` pairs whose sizes :func:`check_pairs` has checked from the file headers.
:class:`SegmentationDataset` returns ``(image, mask)``: image float32 ``(3, H, W)`` (in [0, 1] with
this package's pipelines), mask int64 ``(H, W)``. :func:`segmentation_collate` stacks training crops;
:func:`segmentation_eval_collate` lists whole images of different sizes (the model pads them).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..classes import voc_colormap
from ..common import (
    IGNORE_INDEX, MAX_LISTED, UNREADABLE, Transform, check_each, load_rgb, read_header, reduced_size,
)
from ..errors import DataError

__all__ = [
    "SegmentationDataset",
    "SegmentationRecord",
    "check_mask_values",
    "check_pairs",
    "load_mask",
    "segmentation_collate",
    "segmentation_eval_collate",
]

# PIL modes a mask may have: palette indices, grayscale values, bilevel, 32/16-bit integers, colours.
_MASK_MODES = ("P", "PA", "L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "RGB", "RGBA")


@dataclasses.dataclass(frozen=True)
class SegmentationRecord:
    """One image and its class mask (same size, checked by the readers)."""

    image: Path
    mask: Path


def check_pairs(records: Sequence[SegmentationRecord]) -> None:
    """Read every image and mask header (threads: the cost is file-system latency); raise on the first problems."""
    check_each(records, _header_problem, "{count} bad image/mask pair(s)")


def _header_problem(record: SegmentationRecord) -> str | None:
    headers = []
    for path in (record.image, record.mask):
        try:
            width, height, mode = read_header(path)
        except UNREADABLE as exc:
            return f"cannot read {path}: {exc}"
        headers.append(((width, height), mode))
    ((iw, ih), _), ((mw, mh), mask_mode) = headers
    if mask_mode not in _MASK_MODES:
        return f"mask {record.mask} has the image mode {mask_mode!r}; masks are palette, grayscale or RGB PNGs"
    if (iw, ih) != (mw, mh):
        return f"image {record.image} is {iw}x{ih} but its mask {record.mask} is {mw}x{mh}"
    return None


# --------------------------------------------------------------------------------------------------
# Masks


def load_mask(path: str | os.PathLike[str], num_classes: int, *, palette: np.ndarray | None = None) -> np.ndarray:
    """Read a class mask as uint8 ``(H, W)`` and check that every value is a class or :data:`IGNORE_INDEX`.

    - palette images (mode ``"P"``, VOC ``SegmentationClass``): the palette indices, as they are;
    - grayscale images (``"L"``, ``"1"``, 16/32-bit ``"I"``; SBD ``SegmentationClassAug``): the values;
    - colour images (``"RGB"``/``"RGBA"``, a palette mask saved as colours): each colour becomes its
      row in ``palette`` (``(K, 3)``, default :func:`voc_colormap`), alpha ignored.

    Raises:
        DataError: naming the file: it cannot be read, has another mode, holds colours not in the
            palette (up to 5 listed), or values neither below ``num_classes`` nor 255 (listed).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes must be an integer in 1..255 (255 marks ignored pixels), got {num_classes!r}")
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("P", "PA", "L", "LA"):
                values = np.array(img.getchannel(0))  # palette indices / grey values, alpha dropped
            elif mode == "1":
                values = np.array(img, dtype=np.uint8)  # 0/1
            elif mode in ("I", "I;16", "I;16B", "I;16L"):
                values = np.array(img.convert("I"), dtype=np.int64)
            elif mode in ("RGB", "RGBA"):
                values = np.array(img.convert("RGB"))
            else:
                values = None
    except UNREADABLE as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from exc
    if values is None:
        raise DataError(f"mask {path} has the image mode {mode!r}; masks are palette, grayscale or RGB PNGs")
    if values.ndim == 3:
        values = _colors_to_indices(values, path, palette)
    if values.dtype == np.uint8:
        counts = np.bincount(values.ravel(), minlength=256)
        bad = (np.flatnonzero(counts[num_classes:IGNORE_INDEX]) + num_classes).tolist()
    else:  # wider integers (16/32-bit masks); the "1" mode gives 0/255
        found = np.unique(values)
        bad = found[((found < 0) | (found >= num_classes)) & (found != IGNORE_INDEX)].tolist()
    if bad:
        listed = bad if len(bad) <= 10 else [*bad[:10], "..."]
        raise DataError(
            f"mask {path} has values {listed} outside 0..{num_classes - 1} and {IGNORE_INDEX} (ignore); "
            f"the dataset has {num_classes} classes"
        )
    return values.astype(np.uint8, copy=False)


def check_mask_values(records: Sequence[SegmentationRecord], num_classes: int) -> None:
    """Read every mask of ``records`` once and check its values (:func:`load_mask`), before training.

    Decoding runs in threads (PIL releases the GIL); VOC's 10,582 ``train_aug`` masks take seconds.

    Raises:
        DataError: listing the first bad masks, each with its file and values.
    """

    def problem(record: SegmentationRecord) -> str | None:
        try:
            load_mask(record.mask, num_classes)
        except DataError as exc:
            return str(exc)
        return None

    # decoding is CPU work (in PIL, without the GIL): fewer threads than the header checks
    workers = min(8, 2 * (os.cpu_count() or 1))
    check_each(records, problem, "{count} of {total} masks are not usable", max_workers=workers)


def _colors_to_indices(rgb: np.ndarray, path: str | os.PathLike[str], palette: np.ndarray | None) -> np.ndarray:
    """Map each pixel's colour ``(H, W, 3)`` to its row in ``palette``; unknown colours raise DataError."""
    palette = voc_colormap(256) if palette is None else np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or not 1 <= len(palette) <= 256:
        raise ValueError(f"palette must be (K, 3) RGB colours with K <= 256, got shape {palette.shape}")
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    colors, inverse = np.unique(codes.ravel(), return_inverse=True)
    palette = palette.astype(np.int64)
    palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    index_of: dict[int, int] = {}
    for i, code in enumerate(palette_codes.tolist()):
        index_of.setdefault(code, i)  # a colour listed twice maps to its first row
    unknown = [code for code in colors.tolist() if code not in index_of]
    if unknown:
        shown = [(c >> 16, (c >> 8) & 255, c & 255) for c in unknown[:MAX_LISTED]]
        more = f" ... and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
        raise DataError(
            f"mask {path} is an RGB image with {len(unknown)} colour(s) that are not in the class colour map: "
            f"{shown}{more}; save masks as palette or grayscale PNGs of class indices"
        )
    lut = np.array([index_of[code] for code in colors.tolist()], dtype=np.uint8)
    return lut[inverse].reshape(rgb.shape[:2])


# --------------------------------------------------------------------------------------------------
# Dataset


class SegmentationDataset(Dataset):
    """``(image, mask)`` pairs of ``records``, through an albumentations ``transform``.

    Args:
        records: e.g. from :func:`~vision_tasks.data.formats.voc_segmentation.read_voc_segmentation`.
        num_classes: classes including the background; mask values must be below it or 255.
        transform: called as ``transform(image=uint8_hwc_rgb, mask=uint8_hw)`` (see
            :func:`~vision_tasks.data.transforms.segmentation.segmentation_train_transform`); it should end in
            ``ToTensorV2``. Without one, images come as float ``(3, H, W)`` in [0, 1].

    Returns ``(image, mask)``: float32 ``(3, H, W)`` and int64 ``(H, W)``. Images are read with
    :func:`~vision_tasks.data.common.load_rgb` (grayscale, palette and RGBA become RGB),
    masks with :func:`load_mask`; an image whose longer side exceeds ``max_side`` is decoded reduced to it
    and its mask resized alike (nearest neighbour). Raises :class:`DataError` naming the file(s) if one
    cannot be read, a mask has values outside the classes, or an image and its mask differ in size.
    """

    def __init__(
        self, records: Sequence[SegmentationRecord], num_classes: int, transform: Transform | None = None, *,
        max_side: int | None = None,
    ) -> None:
        self.records = list(records)
        self.num_classes = int(num_classes)
        self.transform = transform
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        image = load_rgb(record.image, max_side=self.max_side)
        mask = load_mask(record.mask, self.num_classes)
        if image.shape[:2] != reduced_size(*mask.shape, self.max_side):
            raise DataError(
                f"image {record.image} is {image.shape[1]}x{image.shape[0]} but its mask {record.mask} is "
                f"{mask.shape[1]}x{mask.shape[0]}"
            )
        if image.shape[:2] != mask.shape:  # the image was decoded reduced: the mask follows (class indices: nearest)
            mask = np.array(Image.fromarray(mask).resize((image.shape[1], image.shape[0]), Image.NEAREST))
        if self.transform is None:
            # [0, 1] floats, as the classification and detection datasets give without a transform
            return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0), torch.from_numpy(mask).long()
        out = self.transform(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
        if isinstance(image, np.ndarray):  # a pipeline without ToTensorV2
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(np.ascontiguousarray(mask))
        return image.float(), mask.long()  # ToTensorV2 keeps the mask uint8


def segmentation_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack training ``(image, mask)`` pairs (one crop size) into ``(N, 3, H, W)`` and ``(N, H, W)``."""
    images, masks = zip(*batch)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch images of different sizes {sorted(shapes)}: end the training pipeline in a "
                         "fixed-size crop (evaluation batches are lists: segmentation_eval_collate)")
    return torch.stack(images), torch.stack(masks)


def segmentation_eval_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Evaluation batches: the images ``(3, H_i, W_i)`` and masks ``(H_i, W_i)`` as lists, each at its own size.

    Segmentation is scored on every pixel of the original images, so nothing is padded here: the
    model pads the batch and crops its logits back in one place
    (:meth:`vision_tasks.models.DeepLabV3MobileNetV2.segment`).
    """
    images, masks = zip(*batch)
    return list(images), list(masks)
