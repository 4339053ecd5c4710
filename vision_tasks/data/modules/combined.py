"""Several data sources with different labels at once, for the joint model (Lightning's ``CombinedLoader``).

Each source is a data module of this package: a detection one (boxes), a segmentation one (class-index
masks), a classification one (one label per image) or a multi-task one (all three). Its batches are turned
into the joint batches of :class:`~vision_tasks.tasks.MultiTaskTask`, ``(images, targets by head name)``,
carrying only the labels the source has, so that each head's loss counts only on the batches that carry its
labels. Training draws one batch of every source per step (``CombinedLoader`` mode ``max_size_cycle``: an
epoch is the longest source, the shorter ones cycle); evaluation runs the sources one after the other.

Example::

    dm = CombinedDataModule({"shapes_boxes": SyntheticDetectionDataModule(...),
                             "shapes_masks": SyntheticSegmentationDataModule(...)})
    dm.setup("fit")
    dm.label_types, dm.head_num_classes     # ('detection', 'segmentation'), {'detection': 8, 'segmentation': 9}
    batch = next(iter(dm.train_dataloader()))   # {"shapes_boxes": (images, {"detection": [...]}), "shapes_masks": ...}
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader

__all__ = ["CombinedDataModule", "source_label_types"]

MODES = ("max_size_cycle", "min_size", "max_size")


def source_label_types(datamodule: Any) -> tuple[str, ...]:
    """The heads whose labels ``datamodule`` gives: its ``label_types``, or what its kind of data carries (a
    detection data module: ``detection``; segmentation: ``segmentation``; classification: ``classification``)."""
    declared = getattr(datamodule, "label_types", None)
    if declared is not None:
        return tuple(declared)
    from .classification import ImageFolderDataModule, SyntheticClassificationDataModule
    from .detection import _DetectionDataModule
    from .segmentation import _SegmentationDataModule

    kinds = ((_DetectionDataModule, "detection"), (_SegmentationDataModule, "segmentation"),
             ((ImageFolderDataModule, SyntheticClassificationDataModule), "classification"))
    for base, kind in kinds:
        if isinstance(datamodule, base):
            return (kind,)
    raise ValueError(f"{type(datamodule).__name__} is no data module of vision_tasks.data whose labels are known "
                     "(detection, segmentation, classification or multi-task)")


class _ByHead:
    """A source's collate function followed by the conversion of its batch into ``(images, targets by head)``
    (a picklable object: DataLoader workers may need it)."""

    def __init__(self, kind: str, collate: Callable[[list[Any]], Any] | None, num_classes: int) -> None:
        self.kind, self.collate, self.num_classes = kind, collate, num_classes

    def __call__(self, samples: list[Any]) -> Any:
        if self.collate is None:
            from torch.utils.data import default_collate

            batch = default_collate(samples)
        else:
            batch = self.collate(samples)
        if self.kind == "multitask":
            return batch
        images, labels = batch
        if self.kind == "classification":  # one label per image: the multi-hot vector of that class
            labels = torch.nn.functional.one_hot(labels, self.num_classes).float()
        if isinstance(images, (list, tuple)):  # evaluation lists (segmentation: images at their own size)
            if len({tuple(image.shape) for image in images}) == 1:
                images, labels = torch.stack(list(images)), torch.stack(list(labels))
            else:  # one pass per image
                return {i: (image[None], {self.kind: label[None]}) for i, (image, label) in enumerate(zip(images, labels))}
        return images, {self.kind: labels}


class CombinedDataModule(pl.LightningDataModule):
    """The data modules ``sources`` (name -> data module) served together to the joint model.

    ``label_types`` is the union of the sources' labels (:func:`source_label_types`), ``head_num_classes`` the
    classes each head needs (a detection source's for detection; a segmentation source's, background included,
    for segmentation; a classification source's for the image labels; sources that disagree are refused),
    ``class_names`` those of the first source with boxes or image labels, ``segmentation_class_names`` those of
    the segmentation source.

    Args:
        sources: name -> data module (Hydra builds them from their configs); or name -> ``{"_target_": class
            path, **arguments}`` (what the hyperparameters record, so that ``type(dm)(**dm.hparams)`` rebuilds it).
        mode: the ``CombinedLoader`` mode of training: ``max_size_cycle`` (default), ``min_size``, ``max_size``.
    """

    def __init__(self, sources: Mapping[str, Any], mode: str = "max_size_cycle") -> None:
        super().__init__()
        if not sources:
            raise ValueError("CombinedDataModule needs at least one source (name -> data module)")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.sources: dict[str, pl.LightningDataModule] = {name: _build(name, source) for name, source in sources.items()}
        self.mode = mode
        self.kinds = {name: source_label_types(dm) for name, dm in self.sources.items()}
        self.save_hyperparameters({"sources": {name: {"_target_": f"{type(dm).__module__}.{type(dm).__qualname__}",
                                                      **dict(dm.hparams)} for name, dm in self.sources.items()},
                                   "mode": mode})

    @property
    def label_types(self) -> tuple[str, ...]:
        found = {kind for kinds in self.kinds.values() for kind in kinds}
        return tuple(k for k in ("classification", "detection", "segmentation") if k in found)

    @property
    def head_num_classes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name, dm in self.sources.items():
            given = getattr(dm, "head_num_classes", None) or {kind: dm.num_classes for kind in self.kinds[name]}
            for head, count in given.items():
                if counts.setdefault(head, count) != count:
                    raise ValueError(f"the sources give the {head} head different numbers of classes: {count} "
                                     f"({name}) and {counts[head]} (an earlier source); they must share their classes")
        return counts

    @property
    def class_names(self) -> list[str] | None:
        for name, dm in self.sources.items():
            if {"detection", "classification"} & set(self.kinds[name]):
                return list(dm.class_names)
        return None

    @property
    def segmentation_class_names(self) -> list[str] | None:
        for name, dm in self.sources.items():
            if "segmentation" in self.kinds[name]:
                return list(getattr(dm, "segmentation_class_names", None) or dm.class_names)
        return None

    @property
    def eval_transform(self) -> Any:
        """The evaluation pipeline of prediction (``tools/predict.py``): the first source with boxes's (the detection
        head's square input), else the first source's."""
        for name, dm in self.sources.items():
            if "detection" in self.kinds[name]:
                return dm.eval_transform
        return next(iter(self.sources.values())).eval_transform

    def prepare_data(self) -> None:
        for dm in self.sources.values():
            dm.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for dm in self.sources.values():
            dm.trainer = self.trainer
            dm.setup(stage)

    def _loaders(self, which: str) -> dict[str, DataLoader]:
        loaders = {}
        for name, dm in self.sources.items():
            loader = getattr(dm, which)()
            kinds = self.kinds[name]
            kind = kinds[0] if len(kinds) == 1 else "multitask"
            loader.collate_fn = _ByHead(kind, loader.collate_fn, getattr(dm, "num_classes", 0))
            loaders[name] = loader
        return loaders

    def train_dataloader(self) -> CombinedLoader:
        return CombinedLoader(self._loaders("train_dataloader"), mode=self.mode)

    def val_dataloader(self) -> CombinedLoader:
        return CombinedLoader(self._loaders("val_dataloader"), mode="sequential")

    def test_dataloader(self) -> CombinedLoader:
        return CombinedLoader(self._loaders("test_dataloader"), mode="sequential")

    def state_dict(self) -> dict[str, Any]:
        return {name: dm.state_dict() for name, dm in self.sources.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, dm in self.sources.items():
            if name in state_dict:
                dm.load_state_dict(state_dict[name])


def _build(name: str, source: Any) -> pl.LightningDataModule:
    if isinstance(source, pl.LightningDataModule):
        return source
    if isinstance(source, Mapping) and isinstance(source.get("_target_"), str):
        module, _, cls = source["_target_"].rpartition(".")
        if not module.startswith("vision_tasks.data"):
            raise ValueError(f"source {name}: {source['_target_']} is no data module of vision_tasks.data")
        return getattr(importlib.import_module(module), cls)(**{k: v for k, v in source.items() if k != "_target_"})
    raise ValueError(f"source {name} must be a data module (or its configuration with a _target_), got "
                     f"{type(source).__name__}")
