"""Multi-task data modules: COCO-layout data with instance masks, which carries the labels of every head.

One file gives all three label types (:mod:`vision_tasks.data.formats.instances`): boxes for the detection
head, the class-index mask (each instance's category painted, background 0, crowd regions and overlaps of
different categories 255) for the segmentation head, and the image labels (which classes are present) for
the multi-label classification head. Batches are ``(images, targets)`` with ``targets`` by head name
(:func:`~vision_tasks.data.formats.instances.multitask_collate`).

Example::

    dm = MultiTaskDataModule("../shared/data/coco128", train_split="train2017", val_split="val2017", image_size=320)
    dm.setup("fit")
    dm.head_num_classes          # {'classification': 80, 'detection': 80, 'segmentation': 81}
    images, targets = next(iter(dm.train_dataloader()))
    targets["detection"][0]["boxes"], targets["segmentation"].shape, targets["classification"].shape
"""

from __future__ import annotations

from typing import Any

from ..classes import SHAPES
from ..common import IGNORE_INDEX, Transform
from ..formats.coco import read_coco, read_coco_instances
from ..formats.detection import DetectionAnnotations
from ..formats.instances import InstanceRecord, MultiTaskDataset, multitask_collate
from ..synthetic.multitask import generate_multitask
from .base import GeneratedData
from .detection import CocoDetectionDataModule

__all__ = ["MultiTaskDataModule", "SyntheticMultiTaskDataModule"]

# The heads whose labels a COCO instances file with masks gives.
LABEL_TYPES: tuple[str, ...] = ("classification", "detection", "segmentation")


class MultiTaskDataModule(CocoDetectionDataModule):
    """Train/val loaders over COCO-layout data with instance masks (``root/annotations/instances_<split>.json``
    with a ``segmentation`` per annotation, ``root/<split>/``), serving the labels of every head.

    The splits are read and checked as :class:`~vision_tasks.data.CocoDetectionDataModule` reads them, and each
    annotation's mask too (:func:`~vision_tasks.data.formats.coco.read_coco_instances`: a file of boxes only is
    refused, naming it). The augmentation presets are the detection ones (``"ssd"``, ``"ssdlite"``, ``"flip"``,
    ``"none"``: albumentations moves the class-index mask with the image and the boxes; zoom-out pads it with
    background), ending in a square ``image_size`` resize; the mask is evaluated at that size.

    ``label_types`` are the heads it has labels for: all three, or with ``masks=False`` (or ``None`` and files of
    boxes only, such as ``../shared/data/coco128``'s, converted from YOLO labels) classification and detection, so
    that a model with a segmentation head is refused before training, naming the data. ``head_num_classes`` the number of classes of
    each head: the categories for classification and detection, the categories plus the background for
    segmentation, whose ``segmentation_class_names`` are ``["background", *class_names]``.

    Args:
        masks: read the instance masks (``True``: refuse files without them), leave them (``False``), or
            ``None``: read them where the files have them.
        the others: as :class:`~vision_tasks.data.CocoDetectionDataModule`.
    """

    collate_fn = staticmethod(multitask_collate)
    ignore_index = IGNORE_INDEX

    def __init__(self, root: str, *, masks: bool | None = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.hparams["masks"] = masks
        self.masks = masks
        self._has_masks: dict[str, bool] = {}

    @property
    def label_types(self) -> tuple[str, ...]:
        """The heads this data has labels for (the masks' are known once the files are read, in ``setup``)."""
        if self.masks is False or (self._has_masks and not all(self._has_masks.values())):
            return ("classification", "detection")
        return LABEL_TYPES

    def _read(self, split: str) -> DetectionAnnotations:
        path = self.annotation_file(split)
        if self.masks is False:
            annotations = read_coco(path, self.root / split)
        else:
            annotations = read_coco_instances(path, self.root / split, require_masks=bool(self.masks))
        self._has_masks[split] = all(isinstance(r, InstanceRecord) for r in annotations.records)
        return annotations

    def _read_train(self) -> DetectionAnnotations:
        return self._read(self.train_split)

    def _read_val(self) -> DetectionAnnotations:
        return self._read(self.val_split)

    def _make_dataset(self, records: list, transform: Transform) -> MultiTaskDataset:
        return MultiTaskDataset(records, self.num_classes, transform, max_side=self.max_side)

    @property
    def segmentation_class_names(self) -> list[str]:
        """The classes of the class-index mask: the background, then the categories."""
        return ["background", *self.class_names]

    @property
    def head_num_classes(self) -> dict[str, int]:
        """The number of outputs each head needs for this data."""
        return {"classification": self.num_classes, "detection": self.num_classes,
                "segmentation": self.num_classes + 1}


class SyntheticMultiTaskDataModule(GeneratedData, MultiTaskDataModule):
    """The embedded default of ``task=multitask``: the synthetic shapes with instance masks
    (:func:`~vision_tasks.data.synthetic.multitask.generate_multitask`), read as COCO.

    Generated once (``prepare_data``) into ``root`` or the cache folder of its parameters
    (:func:`~vision_tasks.data.synthetic.cache.synthetic_root`); ``synthetic_image_size`` is the size of the
    stored images, ``image_size`` the model's input; the other generation arguments are those of
    :func:`generate_multitask`, the others go to :class:`MultiTaskDataModule`. Hyperparameters record the
    arguments as given (``root=None`` for the cache folder), as :class:`~vision_tasks.data.SyntheticDetectionDataModule`.
    """

    synthetic_task = "multitask"
    generate = staticmethod(generate_multitask)

    def __init__(
        self,
        root: str | None = None,
        *,
        num_train: int = 2000,
        num_val: int = 200,
        synthetic_image_size: int = 128,
        min_objects: int = 1,
        max_objects: int = 3,
        min_size: float = 0.25,
        max_size: float = 0.6,
        max_overlap: float = 0.3,
        seed: int = 0,
        clutter: bool = False,
        image_size: int = 128,
        augmentation: str = "flip",
        batch_size: int = 16,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        self.generation_params = dict(
            num_train=num_train, num_val=num_val, image_size=synthetic_image_size, min_objects=min_objects,
            max_objects=max_objects, min_size=min_size, max_size=max_size, max_overlap=max_overlap, seed=seed,
            clutter=clutter,
        )
        super().__init__(
            self._synthetic_root(root), image_size=image_size, augmentation=augmentation, batch_size=batch_size,
            num_workers=num_workers, **kwargs,
        )
        self.hparams.clear()
        self.save_hyperparameters(
            dict(
                root=root, num_train=num_train, num_val=num_val, synthetic_image_size=synthetic_image_size,
                min_objects=min_objects, max_objects=max_objects, min_size=min_size, max_size=max_size,
                max_overlap=max_overlap, seed=seed, clutter=clutter, image_size=image_size, augmentation=augmentation,
                batch_size=batch_size, num_workers=num_workers, **kwargs,
            )
        )

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        return list(SHAPES), list(range(1, len(SHAPES) + 1))
