"""Semantic segmentation data: Pascal VOC (and SBD) and mask-folder readers, the dataset, the data modules.

Readers check what they read before training and raise :class:`DataError` naming the file and the
reason; both produce :class:`SegmentationRecord` (image, mask) pairs whose sizes have been checked
from the file headers:

- :func:`read_voc_segmentation`: ``VOC<year>/{JPEGImages,SegmentationClass,ImageSets/Segmentation/<split>.txt}``;
  the SBD augmented set is ``split="train_aug", masks="SegmentationClassAug"``.
- :func:`read_segmentation_folder`: any dataset of images and same-named PNG masks.

Masks hold class indices, 0 the background, :data:`IGNORE_INDEX` (255) for pixels no loss or metric
counts (VOC's "void" border). :func:`load_mask` reads palette PNGs (VOC ``SegmentationClass``),
grayscale PNGs (``SegmentationClassAug``, most custom sets) and colour PNGs (masks saved as colours
are mapped back through the VOC colour map), and refuses values outside the classes on every load,
so that a bad mask fails with its file name instead of a device-side assert in the loss.

:class:`SegmentationDataset` returns ``(image, mask)``: image float32 ``(3, H, W)``, mask int64
``(H, W)``. :func:`segmentation_collate` stacks them, padding images of different sizes with 0 and
masks with 255.

Example::

    dm = VOCSegmentationDataModule("~/data/VOCdevkit", train_split="train_aug", train_masks="SegmentationClassAug")
    dm.setup("fit")
    dm.num_classes, dm.class_names[:2]                     # 21, ['background', 'aeroplane']
    images, masks = next(iter(dm.train_dataloader()))      # (8, 3, 513, 513) float32, (8, 513, 513) int64
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .classification import IMAGE_EXTENSIONS, load_rgb
from .detection import VOC_CLASSES
from .errors import DataError
from .loaders import GeneratedData, SplitDataModule
from .synthetic import SHAPES
from .transforms import (  # IGNORE_INDEX: the mask value no loss or metric counts (VOC's borders, padding)
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    segmentation_eval_transform,
    segmentation_train_transform,
)

__all__ = [
    "IGNORE_INDEX",
    "VOC_SEG_CLASSES",
    "SegmentationDataset",
    "SegmentationFolderDataModule",
    "SegmentationRecord",
    "SyntheticSegmentationDataModule",
    "VOCSegmentationDataModule",
    "check_mask_values",
    "load_mask",
    "read_segmentation_folder",
    "read_voc_segmentation",
    "segmentation_collate",
    "voc_colormap",
]

# The 21 Pascal VOC segmentation classes: mask value i is VOC_SEG_CLASSES[i].
VOC_SEG_CLASSES: tuple[str, ...] = ("background", *VOC_CLASSES)

VOC_SEG_LAYOUT = (
    "root/VOC<year>/ImageSets/Segmentation/<split>.txt listing ids, with root/VOC<year>/JPEGImages/<id>.jpg "
    "and root/VOC<year>/<masks>/<id>.png"
)

Transform = Callable[..., dict[str, Any]]

_MAX_LISTED = 5  # file names quoted in an error before "... and N more"
# PIL modes a mask may have: palette indices, grayscale values, bilevel, 32/16-bit integers, colours.
_MASK_MODES = ("P", "PA", "L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "RGB", "RGBA")


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: uint8 ``(n, 3)``, the RGB colour of class index ``i`` in row ``i``.

    VOC's rule (``VOCdevkit/VOCcode/VOClabelcolormap.m``): bits 0, 1, 2 of the index go to the most
    significant bit of R, G, B, bits 3, 4, 5 to the next, and so on. Index 0 is black, 1
    ``(128, 0, 0)`` (aeroplane), 15 ``(192, 128, 128)`` (person), 255 ``(224, 224, 192)`` (ignore).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 256:
        raise ValueError(f"n must be an integer in 1..256, got {n!r}")
    index = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):  # bit group j of the index: bits 3j, 3j+1, 3j+2
        for channel in range(3):
            cmap[:, channel] |= ((index >> (3 * j + channel)) & 1) << (7 - j)
    return cmap.astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class SegmentationRecord:
    """One image and its class mask (same size, checked by the readers)."""

    image: Path
    mask: Path


# --------------------------------------------------------------------------------------------------
# Readers


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
    :data:`~vision_tasks.data.classification.IMAGE_EXTENSIONS` when there is no ``.jpg``) and the mask
    ``<masks>/<id>.png``. The SBD augmented training set (10,582 images) is ``split="train_aug",
    masks="SegmentationClassAug"`` (grayscale masks; :func:`load_mask` reads both kinds). Every
    image and mask header is read to check that their sizes agree (cheap: no pixels are decoded).

    Raises:
        DataError: naming the file: no ``VOC<year>`` folder, a missing or empty split list, missing
            images or masks (a few listed with the count), an unreadable header, a mask of an
            unsupported image mode, or an image and mask of different sizes (both files, both sizes).
    """
    base = _voc_base(Path(root).expanduser(), str(year))
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

    image_names = _files_by_stem(image_dir, IMAGE_EXTENSIONS, prefer=".jpg")
    mask_names = _files_by_stem(mask_dir, (".png",))
    missing_images = [i for i in ids if i not in image_names]
    if missing_images:
        raise DataError(
            f"{len(missing_images)} of the {len(ids)} ids listed in {list_file} have no image in {image_dir} "
            f"(<id>.jpg or another image type): {_listing(missing_images)}"
        )
    missing_masks = [i for i in ids if i not in mask_names]
    if missing_masks:
        raise DataError(
            f"{len(missing_masks)} of the {len(ids)} ids listed in {list_file} have no mask <id>.png in {mask_dir}: "
            f"{_listing(missing_masks)}"
        )
    records = [SegmentationRecord(image_dir / image_names[i], mask_dir / mask_names[i]) for i in ids]
    _check_headers(records)
    return records


def _voc_base(root: Path, year: str) -> Path:
    """``root/VOC<year>``, or ``root`` itself when it is that folder."""
    for base in (root / f"VOC{year}", root):
        if (base / "ImageSets" / "Segmentation").is_dir() or (base / "JPEGImages").is_dir():
            return base
    raise DataError(
        f"no VOC{year} segmentation data under {root}: found neither {root / f'VOC{year}' / 'ImageSets'} nor "
        f"{root / 'ImageSets'}; expected the layout {VOC_SEG_LAYOUT}"
    )


def read_segmentation_folder(
    root: str | os.PathLike[str],
    split: str,
    *,
    images: str = "images/{split}",
    masks: str = "masks/{split}",
) -> list[SegmentationRecord]:
    """Read a custom segmentation split: every mask ``root/<masks>/<stem>.png`` with the image of that stem.

    ``images`` and ``masks`` are folders relative to ``root`` in which ``{split}`` is replaced by
    ``split``; images are files of :data:`~vision_tasks.data.classification.IMAGE_EXTENSIONS` (any
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
    mask_names = _files_by_stem(mask_dir, (".png",))
    if not mask_names:
        raise DataError(f"mask folder {mask_dir} holds no .png masks; expected the layout {layout}")
    image_names = _files_by_stem(image_dir, IMAGE_EXTENSIONS, ambiguous="error")
    orphans = sorted(stem for stem in mask_names if stem not in image_names)
    if orphans:
        raise DataError(
            f"{len(orphans)} of the {len(mask_names)} masks in {mask_dir} have no image of the same name in "
            f"{image_dir}: {_listing([mask_names[stem] for stem in orphans])}"
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
    _check_headers(records)
    return records


def _files_by_stem(
    folder: Path, extensions: Sequence[str], *, prefer: str | None = None, ambiguous: str = "prefer"
) -> dict[str, str]:
    """``stem -> file name`` of the non-hidden files of ``folder`` ending in ``extensions`` (any case).

    With several files of one stem, ``prefer`` (an extension) wins, else the first in ``extensions``
    order; ``ambiguous="error"`` raises :class:`DataError` listing them instead.
    """
    found: dict[str, list[str]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            suffix = os.path.splitext(name)[1].lower()
            if name.startswith(".") or suffix not in extensions:
                continue
            found.setdefault(name[: -len(suffix)], []).append(name)
    order = [prefer] if prefer else []
    order += [ext for ext in extensions if ext != prefer]
    clashes = {stem: names for stem, names in found.items() if len(names) > 1}
    if clashes and ambiguous == "error":
        listed = [" / ".join(sorted(names)) for _, names in sorted(clashes.items())]
        raise DataError(
            f"{folder}: {len(clashes)} name(s) with several image files, which is ambiguous: {_listing(listed)}"
        )
    return {
        stem: min(names, key=lambda n: (order.index(os.path.splitext(n)[1].lower()), n))
        for stem, names in found.items()
    }


def _check_headers(records: Sequence[SegmentationRecord]) -> None:
    """Read every image and mask header (threads: the cost is file-system latency); raise on the first problems."""
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        problems = [p for p in pool.map(_header_problem, records, chunksize=64) if p is not None]
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DataError(f"{len(problems)} bad image/mask pair(s):\n  {listed}{more}")


def _header_problem(record: SegmentationRecord) -> str | None:
    headers = []
    for path in (record.image, record.mask):
        try:
            with Image.open(path) as img:
                headers.append((img.size, img.mode))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            return f"cannot read {path}: {exc}"
    ((iw, ih), _), ((mw, mh), mask_mode) = headers
    if mask_mode not in _MASK_MODES:
        return f"mask {record.mask} has the image mode {mask_mode!r}; masks are palette, grayscale or RGB PNGs"
    if (iw, ih) != (mw, mh):
        return f"image {record.image} is {iw}x{ih} but its mask {record.mask} is {mw}x{mh}"
    return None


def _listing(items: Sequence[str]) -> str:
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


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
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
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

    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        problems = [p for p in pool.map(problem, records, chunksize=32) if p is not None]
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DataError(f"{len(problems)} of {len(records)} masks are not usable:\n  {listed}{more}")


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
        shown = [(c >> 16, (c >> 8) & 255, c & 255) for c in unknown[:_MAX_LISTED]]
        more = f" ... and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
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
        records: e.g. from :func:`read_voc_segmentation`.
        num_classes: classes including the background; mask values must be below it or 255.
        transform: called as ``transform(image=uint8_hwc_rgb, mask=uint8_hw)`` (see
            :func:`~vision_tasks.data.transforms.segmentation_train_transform`); it should end in
            ``ToTensorV2``. Without one, images come as float ``(3, H, W)`` in [0, 1].

    Returns ``(image, mask)``: float32 ``(3, H, W)`` and int64 ``(H, W)``. Images are read with
    :func:`~vision_tasks.data.classification.load_rgb` (grayscale, palette and RGBA become RGB),
    masks with :func:`load_mask`. Raises :class:`DataError` naming the file(s) if one cannot be
    read, a mask has values outside the classes, or an image and its mask differ in size.
    """

    def __init__(
        self, records: Sequence[SegmentationRecord], num_classes: int, transform: Transform | None = None
    ) -> None:
        self.records = list(records)
        self.num_classes = int(num_classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        image = load_rgb(record.image)
        mask = load_mask(record.mask, self.num_classes)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"image {record.image} is {image.shape[1]}x{image.shape[0]} but its mask {record.mask} is "
                f"{mask.shape[1]}x{mask.shape[0]}"
            )
        if self.transform is None:
            # [0, 1] floats, as the classification and detection datasets give without a transform
            return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0), torch.from_numpy(mask).long()
        out = self.transform(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
        if isinstance(image, np.ndarray):  # a pipeline without ToTensorV2
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(np.ascontiguousarray(mask))
        # .float(): albumentations' per-image Normalize computes in float64; ToTensorV2 keeps the mask uint8
        return image.float(), mask.long()


def segmentation_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, mask)`` pairs into ``(N, 3, H, W)`` and ``(N, H, W)``.

    Samples of different sizes (evaluation at full size) are padded bottom/right to the largest
    height and width of the batch: images with 0 (the mean pixel after standard normalisation),
    masks with :data:`IGNORE_INDEX`, so that the padding counts in no loss or metric.
    """
    images, masks = zip(*batch)
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    if all(image.shape[-2:] == (height, width) for image in images):
        return torch.stack(images), torch.stack(masks)
    out_images = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    out_masks = masks[0].new_full((len(masks), height, width), IGNORE_INDEX)
    for i, (image, mask) in enumerate(zip(images, masks)):
        out_images[i, :, : image.shape[-2], : image.shape[-1]] = image
        out_masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
    return out_images, out_masks


# --------------------------------------------------------------------------------------------------
# Data modules


class _SegmentationDataModule(SplitDataModule):
    """Pipelines, classes and datasets shared by the segmentation data modules.

    Subclasses read a split with :meth:`_read_train` / :meth:`_read_val`.
    """

    collate_fn = staticmethod(segmentation_collate)
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        crop_size: int,
        scale_range: Sequence[float],
        eval_pad_size: int | None,
        mean: Sequence[float],
        std: Sequence[float],
        normalization: str,
        grayscale: bool,
        batch_size: int,
        num_workers: int,
        verify_masks: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self._class_names = _check_class_names(class_names)
        self.verify_masks = verify_masks
        # Built now so that a bad augmentation argument fails at construction, not at setup.
        norm = dict(mean=mean, std=std, normalization=normalization, grayscale=grayscale)
        self.train_transform = segmentation_train_transform(crop_size, scale_range=scale_range, **norm)
        self.eval_transform = segmentation_eval_transform(pad_size=eval_pad_size, **norm)

    @property
    def class_names(self) -> list[str]:
        """Class names in mask-value order, the background first."""
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes, the background included (the model's outputs)."""
        return len(self._class_names)

    def setup(self, stage: str | None = None) -> None:
        """Read and check the splits the ``stage`` needs (train for ``fit``; val always) and build datasets."""
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = SegmentationDataset(self._records(self._read_train()), self.num_classes,
                                                     self.train_transform)
        if self.val_dataset is None:
            self.val_dataset = SegmentationDataset(self._records(self._read_val()), self.num_classes, self.eval_transform)

    def _records(self, records: list[SegmentationRecord]) -> list[SegmentationRecord]:
        if self.verify_masks:  # bad values stop the run now, not in the middle of an epoch
            check_mask_values(records, self.num_classes)
        return records

    def _read_train(self) -> list[SegmentationRecord]:
        raise NotImplementedError

    def _read_val(self) -> list[SegmentationRecord]:
        raise NotImplementedError


def _check_class_names(class_names: Sequence[str] | str) -> list[str]:
    if isinstance(class_names, str):
        if class_names.lower() != "voc":
            raise ValueError(f"class_names must be a list of names or 'voc', got {class_names!r}")
        return list(VOC_SEG_CLASSES)
    try:
        names = list(class_names)
    except TypeError:
        raise ValueError(f"class_names must be a list of names or 'voc', got {class_names!r}") from None
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"class_names must be a non-empty list of non-empty strings, got {names!r}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"class_names has repeated names {repeated}: {names}")
    if len(names) > IGNORE_INDEX:
        raise ValueError(f"class_names lists {len(names)} classes; at most {IGNORE_INDEX} (mask value 255 is ignore)")
    return names


class VOCSegmentationDataModule(_SegmentationDataModule):
    """Train/val loaders over Pascal VOC segmentation (``root/VOC<year>/...``, see :func:`read_voc_segmentation`).

    The DeepLab recipe is the default: random scale 0.5-2, pad and random 513 crop, flip (see
    :func:`~vision_tasks.data.transforms.segmentation_train_transform`); evaluation on the whole
    image padded to 513 (the padding is ignored). The paper's training set, VOC 2012 ``train_aug``
    (VOC train + SBD, 10,582 images), is ``train_split="train_aug", train_masks="SegmentationClassAug"``
    (the ``voc_aug`` data config). ``test`` and ``predict`` use the val split.

    Args:
        root: folder holding ``VOC<year>`` (e.g. ``VOCdevkit``), or ``VOC<year>`` itself.
        year: VOC year.
        train_split, val_split: lists of ``ImageSets/Segmentation``.
        train_masks, val_masks: mask folders of each split.
        crop_size: side of the square training crops.
        scale_range: (min, max) random scale factor.
        eval_pad_size: pad evaluation images bottom/right to this size (None: keep their size; the
            collate function pads each batch to its largest image).
        mean, std, normalization, grayscale: normalisation, that of the weights being trained.
        batch_size, num_workers: of every loader.
        verify_masks: read every mask once in ``setup`` and stop on values outside the classes
            (:func:`check_mask_values`), rather than at the batch that holds the first bad mask.
    """

    _CLASS_NAMES: tuple[str, ...] = VOC_SEG_CLASSES

    def __init__(
        self,
        root: str,
        *,
        year: str = "2012",
        train_split: str = "train",
        val_split: str = "val",
        train_masks: str = "SegmentationClass",
        val_masks: str = "SegmentationClass",
        crop_size: int = 513,
        scale_range: tuple[float, float] = (0.5, 2.0),
        eval_pad_size: int | None = 513,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        normalization: str = "standard",
        grayscale: bool = False,
        batch_size: int = 8,
        num_workers: int = 4,
        verify_masks: bool = True,
    ) -> None:
        super().__init__(
            class_names=self._CLASS_NAMES, crop_size=crop_size, scale_range=scale_range, eval_pad_size=eval_pad_size,
            mean=mean, std=std, normalization=normalization, grayscale=grayscale, batch_size=batch_size,
            num_workers=num_workers, verify_masks=verify_masks,
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.year = str(year)
        self.train_split, self.val_split = train_split, val_split
        self.train_masks, self.val_masks = train_masks, val_masks

    def _read_train(self) -> list[SegmentationRecord]:
        return read_voc_segmentation(self.root, self.train_split, year=self.year, masks=self.train_masks)

    def _read_val(self) -> list[SegmentationRecord]:
        return read_voc_segmentation(self.root, self.val_split, year=self.year, masks=self.val_masks)


class SegmentationFolderDataModule(_SegmentationDataModule):
    """Train/val loaders over a custom dataset of images and PNG masks (see :func:`read_segmentation_folder`).

    Args:
        root: dataset folder.
        class_names: names of the mask values ``0..C-1`` (the background first), or ``"voc"`` for
            :data:`VOC_SEG_CLASSES`.
        train_split, val_split: split names, substituted for ``{split}`` in ``images`` and ``masks``.
        images, masks: folders relative to ``root``.
        Other arguments as in :class:`VOCSegmentationDataModule`.
    """

    def __init__(
        self,
        root: str,
        class_names: Sequence[str] | str,
        *,
        train_split: str = "train",
        val_split: str = "val",
        images: str = "images/{split}",
        masks: str = "masks/{split}",
        crop_size: int = 513,
        scale_range: tuple[float, float] = (0.5, 2.0),
        eval_pad_size: int | None = 513,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        normalization: str = "standard",
        grayscale: bool = False,
        batch_size: int = 8,
        num_workers: int = 4,
        verify_masks: bool = True,
    ) -> None:
        super().__init__(
            class_names=class_names, crop_size=crop_size, scale_range=scale_range, eval_pad_size=eval_pad_size,
            mean=mean, std=std, normalization=normalization, grayscale=grayscale, batch_size=batch_size,
            num_workers=num_workers, verify_masks=verify_masks,
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.train_split, self.val_split = train_split, val_split
        self.images, self.masks = images, masks

    def _read_train(self) -> list[SegmentationRecord]:
        return read_segmentation_folder(self.root, self.train_split, images=self.images, masks=self.masks)

    def _read_val(self) -> list[SegmentationRecord]:
        return read_segmentation_folder(self.root, self.val_split, images=self.images, masks=self.masks)


class SyntheticSegmentationDataModule(GeneratedData, VOCSegmentationDataModule):
    """The embedded default: the synthetic shapes set (:func:`generate_segmentation`), read as Pascal VOC.

    The set is generated once, in ``prepare_data`` (Lightning runs it on one process per node), into
    ``root`` or by default into :func:`synthetic_root`, a cache folder named after the generation
    parameters; later runs reuse it. ``synthetic_image_size`` is the size of the stored images,
    ``crop_size`` that of the training crops; the other generation arguments are those of
    :func:`generate_segmentation`. Classes are ``["background", *SHAPES]``. Colours are random by
    construction, so images are turned grey and standardised one by one.
    """

    _CLASS_NAMES = ("background", *SHAPES)
    synthetic_task = "segmentation"

    def __init__(
        self,
        root: str | None = None,
        *,
        num_train: int = 4000,
        num_val: int = 200,
        synthetic_image_size: int = 128,
        min_objects: int = 1,
        max_objects: int = 3,
        min_size: float = 0.25,
        max_size: float = 0.6,
        max_overlap: float = 0.3,
        seed: int = 0,
        clutter: bool = False,
        crop_size: int = 128,
        scale_range: tuple[float, float] = (0.75, 1.5),
        eval_pad_size: int | None = None,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.25, 0.25, 0.25),
        normalization: str = "image",
        grayscale: bool = True,
        batch_size: int = 16,
        num_workers: int = 0,
        verify_masks: bool = True,
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
            resolved, crop_size=crop_size, scale_range=scale_range, eval_pad_size=eval_pad_size, mean=mean, std=std,
            normalization=normalization, grayscale=grayscale, batch_size=batch_size, num_workers=num_workers,
            verify_masks=verify_masks,
        )
