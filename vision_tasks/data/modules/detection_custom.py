"""Detection data modules for custom data as labelling tools export it: a flat VOC folder, a YOLO dataset.

Both readers (:func:`~vision_tasks.data.formats.voc_folder.read_voc_folder`,
:func:`~vision_tasks.data.formats.yolo.read_yolo`) check what they read before training and produce the
same :class:`~vision_tasks.data.formats.detection.DetectionAnnotations` as the COCO and VOC readers, so
training, evaluation and ``detections.json`` (with category ids ``1..C``) work as for those; the val split
is converted to COCO JSON for evaluation on first access (``val_annotation_file``).

Example::

    dm = YOLODetectionDataModule("~/data/my_set/data.yaml", image_size=320, batch_size=16)
    dm.class_names                               # from data.yaml, before setup
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))   # (16, 3, 320, 320), list of 16 dicts
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..formats.detection import DetectionAnnotations
from ..formats.voc_folder import StemList, read_voc_folder
from ..formats.yolo import read_yolo, yolo_class_names
from .detection import ConvertedDetectionDataModule

__all__ = ["VOCFolderDetectionDataModule", "YOLODetectionDataModule"]


class VOCFolderDetectionDataModule(ConvertedDetectionDataModule):
    """Train/val loaders over a flat folder of images with Pascal VOC XML files (no ``ImageSets``).

    ``root/*.jpg`` with ``root/*.xml`` beside them, or ``root/images/*.jpg`` with ``root/annotations/*.xml``;
    the split is two lists or a seeded fraction. See
    :func:`~vision_tasks.data.formats.voc_folder.read_voc_folder` for the layout, the split and the checks;
    ``setup`` reads the folder once for both splits. ``test`` and ``predict`` use the val split.

    Args:
        root: the dataset folder (``~`` is expanded).
        images, annotations: the image and XML folders relative to ``root`` (None: found, see the reader).
        train_list, val_list: both (text files of stems or file names, or lists), or neither.
        val_fraction, split_seed: the seeded split without lists.
        class_names: label order; None: the sorted class names of the XML files (with a warning: set them).
        keep_difficult: keep ``difficult`` objects as ``iscrowd=1`` (True) or drop them.
        keep_unannotated: keep images without an XML file as negatives (default: skipped, with a warning).
        Other arguments as in :class:`~vision_tasks.data.modules.detection.CocoDetectionDataModule`.
    """

    def __init__(
        self,
        root: str,
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
        image_size: int = 320,
        augmentation: str = "ssdlite",
        batch_size: int = 16,
        num_workers: int = 2,
        verify_images: bool = True,
        bad_images: str = "stop",
    ) -> None:
        super().__init__(
            image_size=image_size, augmentation=augmentation, batch_size=batch_size, num_workers=num_workers,
            verify_images=verify_images, bad_images=bad_images,
        )
        self.save_hyperparameters(
            dict(
                root=root, images=images, annotations=annotations, train_list=train_list, val_list=val_list,
                val_fraction=val_fraction, split_seed=split_seed, class_names=class_names,
                keep_difficult=keep_difficult, keep_unannotated=keep_unannotated, image_size=image_size,
                augmentation=augmentation, batch_size=batch_size, num_workers=num_workers,
                verify_images=verify_images, bad_images=bad_images,
            )
        )
        if (train_list is None) != (val_list is None):
            raise ValueError("give both train_list and val_list, or neither (then val_fraction splits the folder)")
        if train_list is None and not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
        self.root = Path(root).expanduser()
        self.read_args = dict(
            images=images, annotations=annotations, train_list=train_list, val_list=val_list,
            val_fraction=float(val_fraction), split_seed=int(split_seed),
            class_names=None if class_names is None else [str(name) for name in class_names],
            keep_difficult=bool(keep_difficult), keep_unannotated=bool(keep_unannotated),
        )
        self._splits: dict[str, DetectionAnnotations] | None = None

    def _split(self, split: str) -> DetectionAnnotations:
        if self._splits is None:
            self._splits = read_voc_folder(self.root, **self.read_args)
        return self._splits[split]

    def _read_train(self) -> DetectionAnnotations:
        return self._split("train")

    def _read_val_split(self) -> DetectionAnnotations:
        return self._split("val")

    def _coco_cache_name(self) -> str:
        return f"{self.root.name or 'voc_folder'}-val"

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        names = self.read_args["class_names"]
        if names is None:
            return super()._peek_categories()  # found in the XML files by setup()
        return list(names), list(range(1, len(names) + 1))


class YOLODetectionDataModule(ConvertedDetectionDataModule):
    """Train/val loaders over a YOLO txt dataset (Ultralytics / Roboflow / CVAT / Label Studio exports).

    ``root/images/{train,val}/*.jpg`` with ``root/labels/{train,val}/*.txt`` and the class names in
    ``root/data.yaml`` (or ``root`` the yaml file itself, whose ``path``/``train``/``val`` give the folders).
    See :func:`~vision_tasks.data.formats.yolo.read_yolo` for the layout and the checks. ``class_names``
    and ``category_ids`` (``1..C``) are known before ``setup``; ``test`` and ``predict`` use the val split.

    Args:
        root: the dataset folder or its ``data.yaml`` (``~`` is expanded).
        train_split, val_split: the splits' keys in ``data.yaml``, or their folder names under ``images/``.
        class_names: label order, in place of the yaml's ``names`` (needed without a ``data.yaml``).
        Other arguments as in :class:`~vision_tasks.data.modules.detection.CocoDetectionDataModule`.
    """

    def __init__(
        self,
        root: str,
        *,
        train_split: str = "train",
        val_split: str = "val",
        class_names: Sequence[str] | None = None,
        image_size: int = 320,
        augmentation: str = "ssdlite",
        batch_size: int = 16,
        num_workers: int = 2,
        verify_images: bool = True,
        bad_images: str = "stop",
    ) -> None:
        super().__init__(
            image_size=image_size, augmentation=augmentation, batch_size=batch_size, num_workers=num_workers,
            verify_images=verify_images, bad_images=bad_images,
        )
        self.save_hyperparameters(
            dict(
                root=root, train_split=train_split, val_split=val_split, class_names=class_names,
                image_size=image_size, augmentation=augmentation, batch_size=batch_size, num_workers=num_workers,
                verify_images=verify_images, bad_images=bad_images,
            )
        )
        self.root = Path(root).expanduser()
        self.train_split, self.val_split = str(train_split), str(val_split)
        self.requested_classes = None if class_names is None else [str(name) for name in class_names]

    def _read_train(self) -> DetectionAnnotations:
        return read_yolo(self.root, self.train_split, class_names=self.requested_classes)

    def _read_val_split(self) -> DetectionAnnotations:
        return read_yolo(self.root, self.val_split, class_names=self.requested_classes)

    def _coco_cache_name(self) -> str:
        name = self.root.parent.name if self.root.is_file() else self.root.name
        return f"{name or 'yolo'}-{self.val_split}"

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        names = yolo_class_names(self.root, self.requested_classes)
        return names, list(range(1, len(names) + 1))
