"""Semantic segmentation data modules: Pascal VOC (and SBD), mask folders, and the synthetic shapes.

The readers (:func:`~vision_tasks.data.formats.voc_segmentation.read_voc_segmentation`,
:func:`~vision_tasks.data.formats.mask_folder.read_segmentation_folder`) check what they read before
training; both produce :class:`~vision_tasks.data.formats.masks.SegmentationRecord` (image, mask)
pairs, served by :class:`~vision_tasks.data.formats.masks.SegmentationDataset` and batched by
:func:`~vision_tasks.data.formats.masks.segmentation_collate` (training crops, stacked) and
:func:`~vision_tasks.data.formats.masks.segmentation_eval_collate` (whole images of different sizes, as
lists: the model pads them and crops its logits back). Images are [0, 1] floats: the models normalise
them themselves.

Example::

    dm = VOCSegmentationDataModule("~/data/VOCdevkit", train_split="train_aug", train_masks="SegmentationClassAug")
    dm.setup("fit")
    dm.num_classes, dm.class_names[:2]                     # 21, ['background', 'aeroplane']
    images, masks = next(iter(dm.train_dataloader()))      # (8, 3, 513, 513) float32, (8, 513, 513) int64
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..classes import SHAPES, VOC_SEG_CLASSES
from ..common import IGNORE_INDEX, REDUCE_ABOVE
from ..formats.mask_folder import read_segmentation_folder
from ..formats.masks import (
    SegmentationDataset,
    SegmentationRecord,
    check_mask_values,
    segmentation_collate,
    segmentation_eval_collate,
)
from ..formats.voc_segmentation import read_voc_segmentation
from ..synthetic.segmentation import generate_segmentation
from ..transforms.segmentation import segmentation_eval_transform, segmentation_train_transform
from .base import GeneratedData, SplitDataModule

__all__ = ["SegmentationFolderDataModule", "SyntheticSegmentationDataModule", "VOCSegmentationDataModule"]


class _SegmentationDataModule(SplitDataModule):
    """Pipelines, classes and datasets shared by the segmentation data modules.

    Subclasses read a split with :meth:`_read_train` / :meth:`_read_val`.
    """

    collate_fn = staticmethod(segmentation_collate)
    eval_collate_fn = staticmethod(segmentation_eval_collate)
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        crop_size: int,
        scale_range: Sequence[float],
        batch_size: int,
        num_workers: int,
        verify_masks: bool = True,
        verify_images: bool = True,
        bad_images: str = "stop",
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, verify_images=verify_images,
                         bad_images=bad_images)
        self._class_names = _check_class_names(class_names)
        self.verify_masks = verify_masks
        # Built now so that a bad augmentation argument fails at construction, not at setup.
        self.train_transform = segmentation_train_transform(crop_size, scale_range=scale_range)
        self.max_side = REDUCE_ABOVE * int(crop_size)  # larger images are decoded reduced, their masks alike
        self.eval_transform = segmentation_eval_transform()

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
            self.train_dataset = SegmentationDataset(self._records(self._read_train(), "training"), self.num_classes,
                                                     self.train_transform, max_side=self.max_side)
        if self.val_dataset is None:
            self.val_dataset = SegmentationDataset(self._records(self._read_val(), "validation"), self.num_classes,
                                                   self.eval_transform, max_side=self.max_side)

    def _records(self, records: list[SegmentationRecord], which: str) -> list[SegmentationRecord]:
        usable = self._usable([record.image for record in records], f"{which} images")
        records = [record for record, ok in zip(records, usable) if ok]
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
    :func:`~vision_tasks.data.transforms.segmentation.segmentation_train_transform`); evaluation on
    the whole image (the task's ``eval_pad_size`` pads it to 513 as TF does; the padding is ignored).
    The paper's training set, VOC 2012 ``train_aug`` (VOC train + SBD, 10,582 images), is
    ``train_split="train_aug", train_masks="SegmentationClassAug"`` (the ``voc_aug`` data config). ``test`` and ``predict`` use the val split.

    Args:
        root: folder holding ``VOC<year>`` (e.g. ``VOCdevkit``), or ``VOC<year>`` itself.
        year: VOC year.
        train_split, val_split: lists of ``ImageSets/Segmentation``.
        train_masks, val_masks: mask folders of each split.
        crop_size: side of the square training crops.
        scale_range: (min, max) random scale factor.
        batch_size, num_workers: of every loader (evaluation batches are lists of whole images).
        verify_masks: read every mask once in ``setup`` and stop on values outside the classes
            (:func:`~vision_tasks.data.formats.masks.check_mask_values`), rather than at the batch that
            holds the first bad mask.
        verify_images, bad_images: decode every image once in ``setup`` (cached per file for later runs); a
            bad image stops the run naming it (``"stop"``) or is left out and listed (``"skip"``).
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
        batch_size: int = 8,
        num_workers: int = 4,
        verify_images: bool = True,
        bad_images: str = "stop",
        verify_masks: bool = True,
    ) -> None:
        super().__init__(
            class_names=self._CLASS_NAMES, crop_size=crop_size, scale_range=scale_range, batch_size=batch_size,
            num_workers=num_workers, verify_images=verify_images, bad_images=bad_images, verify_masks=verify_masks,
        )
        self.save_hyperparameters(
            dict(
                root=root, year=year, train_split=train_split, val_split=val_split, train_masks=train_masks,
                val_masks=val_masks, crop_size=crop_size, scale_range=scale_range, batch_size=batch_size,
                num_workers=num_workers, verify_images=verify_images, bad_images=bad_images, verify_masks=verify_masks,
            )
        )
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
        batch_size: int = 8,
        num_workers: int = 4,
        verify_images: bool = True,
        bad_images: str = "stop",
        verify_masks: bool = True,
    ) -> None:
        super().__init__(
            class_names=class_names, crop_size=crop_size, scale_range=scale_range, batch_size=batch_size,
            num_workers=num_workers, verify_images=verify_images, bad_images=bad_images, verify_masks=verify_masks,
        )
        self.save_hyperparameters(
            dict(
                root=root, class_names=class_names, train_split=train_split, val_split=val_split, images=images,
                masks=masks, crop_size=crop_size, scale_range=scale_range, batch_size=batch_size,
                num_workers=num_workers, verify_images=verify_images, bad_images=bad_images, verify_masks=verify_masks,
            )
        )
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
    ``root`` or by default into :func:`~vision_tasks.data.synthetic.cache.synthetic_root`, a cache
    folder named after the generation parameters; later runs reuse it. ``synthetic_image_size`` is the
    size of the stored images, ``crop_size`` that of the training crops; the other generation
    arguments are those of :func:`generate_segmentation`. Classes are ``["background", *SHAPES]``.
    The defaults are those of ``configs/datamodule/segmentation_synthetic.yaml``, which also has the model
    turn the images grey and standardise each one (colours are random by construction).

    Hyperparameters (``dm.hparams``, a checkpoint's ``datamodule_hyper_parameters``): the arguments
    of this constructor as given; ``root`` is None when the cache folder is used, so that it is
    resolved again wherever they are loaded rather than pointing at this machine's cache.
    ``type(dm)(**dm.hparams)`` rebuilds the module.
    """

    _CLASS_NAMES = ("background", *SHAPES)
    synthetic_task = "segmentation"
    generate = staticmethod(generate_segmentation)

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
        batch_size: int = 16,
        num_workers: int = 0,
        verify_images: bool = True,
        bad_images: str = "stop",
        verify_masks: bool = True,
    ) -> None:
        self.generation_params = dict(
            num_train=num_train, num_val=num_val, image_size=synthetic_image_size, min_objects=min_objects,
            max_objects=max_objects, min_size=min_size, max_size=max_size, max_overlap=max_overlap, seed=seed,
            clutter=clutter,
        )
        super().__init__(
            self._synthetic_root(root), crop_size=crop_size, scale_range=scale_range, batch_size=batch_size,
            num_workers=num_workers, verify_images=verify_images, bad_images=bad_images, verify_masks=verify_masks,
        )
        # This module's own arguments, root as given (None: the cache folder), in place of what
        # VOCSegmentationDataModule recorded (the resolved folder, its split and mask folders, which this
        # constructor does not take, and none of the generation arguments).
        self.hparams.clear()
        self.save_hyperparameters(
            dict(
                root=root, num_train=num_train, num_val=num_val, synthetic_image_size=synthetic_image_size,
                min_objects=min_objects, max_objects=max_objects, min_size=min_size, max_size=max_size,
                max_overlap=max_overlap, seed=seed, clutter=clutter, crop_size=crop_size, scale_range=scale_range,
                batch_size=batch_size,
                num_workers=num_workers, verify_images=verify_images, bad_images=bad_images, verify_masks=verify_masks,
            )
        )
