"""Object detection data modules: COCO JSON and Pascal VOC XML datasets, and the synthetic shapes (a flat
VOC folder and YOLO txt: :mod:`.detection_custom`, on :class:`ConvertedDetectionDataModule`).

The readers (:func:`~vision_tasks.data.formats.coco.read_coco`,
:func:`~vision_tasks.data.formats.voc_xml.read_voc`) check what they read before training; both
produce the same :class:`~vision_tasks.data.formats.detection.DetectionAnnotations`, served by
:class:`~vision_tasks.data.formats.detection.DetectionDataset` and batched by
:func:`~vision_tasks.data.formats.detection.detection_collate` (images stacked, targets listed).

Example::

    dm = CocoDetectionDataModule("~/data/coco", image_size=320, batch_size=24)
    dm.setup("fit")
    dm.class_names[:2], dm.category_ids[:2]      # ['person', 'bicycle'], [1, 2]
    images, targets = next(iter(dm.train_dataloader()))   # (24, 3, 320, 320), list of 24 dicts
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from ...files import atomic_write
from ..classes import SHAPES, VOC_CLASSES
from ..common import REDUCE_ABOVE, Transform, default_data_dir
from ..errors import DataError
from ..formats.coco import coco_categories, load_json, read_coco
from ..formats.detection import DetectionAnnotations, DetectionDataset, detection_collate
from ..formats.voc_xml import read_voc
from ..synthetic.detection import generate_detection
from ..transforms.detection import detection_eval_transform, detection_train_transform
from .base import GeneratedData, SplitDataModule

__all__ = [
    "CocoDetectionDataModule",
    "ConvertedDetectionDataModule",
    "SyntheticDetectionDataModule",
    "VOCDetectionDataModule",
]


class _DetectionDataModule(SplitDataModule):
    """Loaders, pipelines and category bookkeeping shared by the detection data modules.

    Subclasses read a split with :meth:`_read_train` / :meth:`_read_val`.
    """

    collate_fn = staticmethod(detection_collate)

    def __init__(
        self,
        *,
        image_size: int,
        augmentation: str,
        batch_size: int,
        num_workers: int,
        verify_images: bool = True,
        bad_images: str = "stop",
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, verify_images=verify_images,
                         bad_images=bad_images)
        # Built now so that a bad augmentation argument fails at construction, not at setup.
        self.train_transform = detection_train_transform(image_size, augmentation=augmentation)
        self.eval_transform = detection_eval_transform(image_size)
        self.max_side = REDUCE_ABOVE * int(image_size)  # larger images are decoded reduced, boxes scaled alike
        self._categories: tuple[list[str], list[int]] | None = None

    def _read_train(self) -> DetectionAnnotations:
        raise NotImplementedError

    def _read_val(self) -> DetectionAnnotations:
        raise NotImplementedError

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        """Class names and category ids before :meth:`setup`, where a subclass can read them cheaply."""
        raise RuntimeError(f"{type(self).__name__}: the classes are known after setup(); call dm.setup('fit') first")

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(self._known_categories()[0])

    @property
    def num_classes(self) -> int:
        """Number of foreground classes."""
        return len(self.class_names)

    @property
    def category_ids(self) -> list[int]:
        """The dataset's own category id of each label."""
        return list(self._known_categories()[1])

    def _known_categories(self) -> tuple[list[str], list[int]]:
        if self._categories is None:
            self._categories = self._peek_categories()
        return self._categories

    def setup(self, stage: str | None = None) -> None:
        """Read and check the splits the ``stage`` needs (train for ``fit``; val always) and build datasets."""
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self._read_train(), self.train_transform, "training")
        if self.val_dataset is None:
            self.val_dataset = self._dataset(self._read_val(), self.eval_transform, "validation")

    def _dataset(self, annotations: DetectionAnnotations, transform: Transform, which: str) -> DetectionDataset:
        found = (annotations.class_names, annotations.category_ids)
        if self._categories is not None and found != self._categories:
            raise DataError(
                f"the {which} categories {list(zip(found[1], found[0]))} differ from those of the other split "
                f"{list(zip(self._categories[1], self._categories[0]))}"
            )
        self._categories = found
        records = annotations.records
        usable = self._usable([r.path for r in records], f"{which} images",
                              expected_sizes=[(r.height, r.width) for r in records])
        return self._make_dataset([r for r, ok in zip(records, usable) if ok], transform)

    def _make_dataset(self, records: list, transform: Transform) -> DetectionDataset:
        """The dataset of the checked ``records`` (a subclass serves more labels: the multi-task data module)."""
        return DetectionDataset(records, transform, max_side=self.max_side)


class ConvertedDetectionDataModule(_DetectionDataModule):
    """Base of the data modules of a format other than COCO JSON: their val split, converted, for COCO evaluation.

    Subclasses read the val split with :meth:`_read_val_split` and name the cached file with
    :meth:`_coco_cache_name`; ``val_annotation_file`` (after ``setup``) is that split as a COCO JSON file,
    written on first access under :func:`~vision_tasks.data.common.default_data_dir` (never into the
    dataset; nothing in training needs it, so ``setup`` writes nothing).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._val_annotations: DetectionAnnotations | None = None
        self._val_annotation_file: Path | None = None

    def _read_val_split(self) -> DetectionAnnotations:
        raise NotImplementedError

    def _coco_cache_name(self) -> str:
        """The start of the cached file's name (its content's digest follows)."""
        raise NotImplementedError

    def _read_val(self) -> DetectionAnnotations:
        self._val_annotations = self._read_val_split()
        self._val_annotation_file = None  # written from these annotations when first asked for
        return self._val_annotations

    @property
    def val_annotation_file(self) -> Path:
        """The val split as a COCO JSON file in the cache folder (after :meth:`setup`).

        Written on first access only (see :func:`_write_coco_cache`), then the same path is returned.
        """
        if self._val_annotation_file is None:
            if self._val_annotations is None:
                raise RuntimeError(
                    f"{type(self).__name__}.val_annotation_file is written from the val split that setup() reads; "
                    "call dm.setup() first"
                )
            self._val_annotation_file = _write_coco_cache(self._val_annotations, self._coco_cache_name())
        return self._val_annotation_file


class CocoDetectionDataModule(_DetectionDataModule):
    """Train/val loaders over a COCO-layout dataset: ``root/annotations/instances_<split>.json``, ``root/<split>/``.

    ``setup`` reads and checks the splits (see :func:`~vision_tasks.data.formats.coco.read_coco`) and
    requires the same categories in both; ``test`` and ``predict`` use the val split. ``class_names``
    and ``category_ids`` can be read before ``setup`` (from the val file's categories);
    ``val_annotation_file`` is the val split's JSON, for COCO evaluation.

    Args:
        root: dataset folder (``~`` is expanded).
        train_split, val_split: split names (``train2017``, ``val2017``).
        image_size: side of the square images fed to the model.
        augmentation: training preset, ``"ssd"``, ``"ssdlite"`` or ``"none"`` (see
            :func:`~vision_tasks.data.transforms.detection.detection_train_transform`).
        batch_size, num_workers: of every loader.
        verify_images: decode every image once during ``setup`` and check its size against the annotation
            (cached per file for later runs).
        bad_images: ``"stop"`` (a bad image stops the run, naming it) or ``"skip"`` (left out, listed).

    Images come as float ``(3, image_size, image_size)`` in [0, 1] (the models normalise them
    themselves); each target carries the boxes of that input and the image's own ``annotations``.
    """

    def __init__(
        self,
        root: str,
        *,
        train_split: str = "train2017",
        val_split: str = "val2017",
        image_size: int = 320,
        augmentation: str = "ssd",
        batch_size: int = 32,
        num_workers: int = 4,
        verify_images: bool = True,
        bad_images: str = "stop",
    ) -> None:
        super().__init__(
            image_size=image_size, augmentation=augmentation, batch_size=batch_size, num_workers=num_workers,
            verify_images=verify_images, bad_images=bad_images,
        )
        self.save_hyperparameters(
            dict(
                root=root, train_split=train_split, val_split=val_split, image_size=image_size,
                augmentation=augmentation, batch_size=batch_size, num_workers=num_workers,
                verify_images=verify_images, bad_images=bad_images,
            )
        )
        self.root = Path(root).expanduser()
        self.train_split, self.val_split = train_split, val_split

    def annotation_file(self, split: str) -> Path:
        """``root/annotations/instances_<split>.json``."""
        return self.root / "annotations" / f"instances_{split}.json"

    @property
    def val_annotation_file(self) -> Path:
        """The val split's COCO JSON (what COCO evaluation compares detections with)."""
        return self.annotation_file(self.val_split)

    def _read_train(self) -> DetectionAnnotations:
        return read_coco(self.annotation_file(self.train_split), self.root / self.train_split)

    def _read_val(self) -> DetectionAnnotations:
        return read_coco(self.annotation_file(self.val_split), self.root / self.val_split)

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        path = self.val_annotation_file
        data = load_json(path)
        if not isinstance(data.get("categories"), list):
            raise DataError(f"{path} is not a COCO instances file: no list 'categories'")
        ids, names = coco_categories(data["categories"], path)
        return names, ids


class SyntheticDetectionDataModule(GeneratedData, CocoDetectionDataModule):
    """The embedded default: the synthetic shapes set (:func:`generate_detection`), read as COCO.

    The set is generated once, in ``prepare_data`` (Lightning runs it on one process per node), into
    ``root`` or by default into :func:`~vision_tasks.data.synthetic.cache.synthetic_root`, a cache
    folder named after the generation parameters; later runs reuse it. ``synthetic_image_size`` is the
    size of the stored images, ``image_size`` that of the model's input; the other generation
    arguments are those of :func:`generate_detection`. Other keyword arguments go to
    :class:`CocoDetectionDataModule`. The defaults are those of ``configs/datamodule/detection_synthetic.yaml``,
    which also has the model turn the images grey and standardise each one (colours are random by
    construction).

    Hyperparameters (``dm.hparams``, a checkpoint's ``datamodule_hyper_parameters``): the arguments
    of this constructor as given, extra keyword arguments included; ``root`` is None when the cache
    folder is used, so that it is resolved again wherever they are loaded rather than pointing at this
    machine's cache. ``type(dm)(**dm.hparams)`` rebuilds the module.
    """

    synthetic_task = "detection"
    generate = staticmethod(generate_detection)

    def __init__(
        self,
        root: str | None = None,
        *,
        num_train: int = 4000,
        num_val: int = 200,
        synthetic_image_size: int = 96,
        min_objects: int = 1,
        max_objects: int = 3,
        min_size: float = 0.25,
        max_size: float = 0.6,
        max_overlap: float = 0.3,
        seed: int = 0,
        clutter: bool = False,
        image_size: int = 96,
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
        # This module's own arguments, root as given (None: the cache folder), in place of what
        # CocoDetectionDataModule recorded (the resolved folder, and none of the generation arguments).
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


class VOCDetectionDataModule(ConvertedDetectionDataModule):
    """Train/val loaders over Pascal VOC detection splits (``root/VOC<year>/...``, see :func:`read_voc`).

    The usual protocol is the default: train on VOC2007 trainval + VOC2012 trainval, evaluate on
    VOC2007 test. For VOC2012 alone: ``train_sets=[["2012", "train"]], val_set=["2012", "val"]``.
    ``root`` is the folder holding ``VOC2007``/``VOC2012`` (e.g. ``VOCdevkit``). Training sets are
    concatenated, their image ids renumbered ``0..N-1``; ``test`` and ``predict`` use ``val_set``.

    ``val_annotation_file`` (after ``setup``) is the val split converted to COCO JSON for COCO-style
    evaluation, written on first access under :func:`~vision_tasks.data.common.default_data_dir`
    (never into ``root``; nothing in training needs it, so ``setup`` writes nothing); its
    ``difficult`` objects are crowd regions, so detections on them are ignored.

    Args:
        root: folder holding ``VOC<year>`` (or a ``VOC<year>`` folder itself when all sets are of one year).
        train_sets: ``(year, split)`` pairs read for training.
        val_set: the ``(year, split)`` pair for validation and testing.
        class_names: label order (``None``: the 20 :data:`VOC_CLASSES`); your own list for a custom dataset.
        keep_difficult: keep ``difficult`` objects as ``iscrowd=1`` (True) or drop them.
        Other arguments as in :class:`CocoDetectionDataModule`.
    """

    def __init__(
        self,
        root: str,
        *,
        train_sets: Sequence[Sequence[str]] = (("2007", "trainval"), ("2012", "trainval")),
        val_set: Sequence[str] = ("2007", "test"),
        class_names: Sequence[str] | None = None,
        keep_difficult: bool = True,
        image_size: int = 320,
        augmentation: str = "ssd",
        batch_size: int = 32,
        num_workers: int = 4,
        verify_images: bool = True,
        bad_images: str = "stop",
    ) -> None:
        super().__init__(
            image_size=image_size, augmentation=augmentation, batch_size=batch_size, num_workers=num_workers,
            verify_images=verify_images, bad_images=bad_images,
        )
        self.save_hyperparameters(
            dict(
                root=root, train_sets=train_sets, val_set=val_set, class_names=class_names,
                keep_difficult=keep_difficult, image_size=image_size, augmentation=augmentation,
                batch_size=batch_size, num_workers=num_workers, verify_images=verify_images, bad_images=bad_images,
            )
        )
        self.root = Path(root).expanduser()
        self.train_sets = [self._year_split(pair, "train_sets") for pair in train_sets]
        if not self.train_sets:
            raise ValueError("train_sets must name at least one (year, split) pair")
        self.val_set = self._year_split(val_set, "val_set")
        self.requested_classes = [str(name) for name in (VOC_CLASSES if class_names is None else class_names)]
        self.keep_difficult = bool(keep_difficult)

    @staticmethod
    def _year_split(pair: Sequence[str], name: str) -> tuple[str, str]:
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"{name} takes (year, split) pairs such as ('2007', 'test'), got {pair!r}")
        return str(pair[0]), str(pair[1])

    def _read(self, year: str, split: str) -> DetectionAnnotations:
        return read_voc(
            self.root, year=year, split=split, class_names=self.requested_classes, keep_difficult=self.keep_difficult
        )

    def _read_train(self) -> DetectionAnnotations:
        parts = [self._read(year, split) for year, split in self.train_sets]
        records = [record for part in parts for record in part.records]
        records = [dataclasses.replace(record, image_id=i) for i, record in enumerate(records)]
        return DetectionAnnotations(records, parts[0].class_names, parts[0].category_ids)

    def _read_val_split(self) -> DetectionAnnotations:
        return self._read(*self.val_set)

    def _coco_cache_name(self) -> str:
        return f"VOC{self.val_set[0]}-{self.val_set[1]}"

    def _peek_categories(self) -> tuple[list[str], list[int]]:
        return list(self.requested_classes), list(range(1, len(self.requested_classes) + 1))


def _write_coco_cache(annotations: DetectionAnnotations, name: str) -> Path:
    """Write ``annotations.to_coco()`` under ``default_data_dir()/coco-annotations``, named after its content.

    The same content always gives the same file (the name holds a digest of the image paths and the
    JSON), written once: an existing file is reused, a new one is written atomically (a temporary
    file in the same folder, then ``os.replace``), so that concurrent processes, e.g. one per GPU, do
    not read half a file.
    """
    text = json.dumps(annotations.to_coco())
    digest = hashlib.sha256(f"{[str(r.path) for r in annotations.records]}\n{text}".encode()).hexdigest()[:12]
    path = default_data_dir() / "coco-annotations" / f"{name}-{digest}.json"
    if not path.is_file():
        atomic_write(path, text)
    return path
