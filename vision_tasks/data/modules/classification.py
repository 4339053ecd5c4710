"""ImageFolder classification data modules: ``root/{train,val}/<class>/*.jpg``, real or synthetic.

:class:`ImageFolderDataModule` serves any such folder (ImageNet included), read and checked by
:func:`~vision_tasks.data.formats.image_folder.scan_image_folder`;
:class:`SyntheticClassificationDataModule` first generates the embedded shape dataset in the same
layout, then reads it with the very same code.

Example::

    dm = ImageFolderDataModule("~/data/imagenet", image_size=224, batch_size=256)
    dm.setup("fit")
    dm.num_classes, dm.class_names          # 1000, ['n01440764', ...]
    images, labels = next(iter(dm.train_dataloader()))   # (256, 3, 224, 224) float32, (256,) int64
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common import REDUCE_ABOVE, Transform
from ..errors import DataError
from ..formats.image_folder import ImageFolderDataset, scan_image_folder
from ..synthetic.classification import generate_classification
from ..transforms.classification import classification_eval_transform, classification_train_transform
from .base import GeneratedData, SplitDataModule

__all__ = ["ImageFolderDataModule", "SyntheticClassificationDataModule"]


class ImageFolderDataModule(SplitDataModule):
    """Train/val loaders over ``root/{train_dir,val_dir}/<class>/*.jpg`` (ImageNet or any ImageFolder).

    ``setup`` scans and checks the splits (see
    :func:`~vision_tasks.data.formats.image_folder.scan_image_folder`) and requires the same classes in
    both; ``test`` and ``predict`` use the val split.

    Args:
        root: dataset folder (``~`` is expanded).
        train_dir, val_dir: split sub-folders.
        image_size: side of the square crops fed to the model.
        resize_size: evaluation resize of the shorter side (default ``image_size / 0.875``).
        scale, hflip: training augmentation (see :func:`classification_train_transform`).
        batch_size, num_workers: of every loader.
        verify_images: decode every image once during ``setup`` (cached per file for later runs).
        bad_images: ``"stop"`` (a bad image stops the run, naming it) or ``"skip"`` (left out, listed).
        class_names: use these classes, in this label order, instead of all sub-folders.

    Images come as float ``(3, image_size, image_size)`` in [0, 1]: the models normalise them
    themselves, with the mean/std of their weights.
    """

    def __init__(
        self,
        root: str,
        *,
        train_dir: str = "train",
        val_dir: str = "val",
        image_size: int = 224,
        resize_size: int | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        batch_size: int = 64,
        num_workers: int = 2,
        verify_images: bool = True,
        bad_images: str = "stop",
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, verify_images=verify_images,
                         bad_images=bad_images)
        self.save_hyperparameters(
            dict(
                root=root, train_dir=train_dir, val_dir=val_dir, image_size=image_size, resize_size=resize_size,
                scale=scale, hflip=hflip, batch_size=batch_size, num_workers=num_workers,
                verify_images=verify_images, bad_images=bad_images, class_names=class_names,
            )
        )
        self.root = Path(root).expanduser()
        self.train_dir, self.val_dir = train_dir, val_dir
        self.requested_classes = list(class_names) if class_names is not None else None
        # Built now so that a bad augmentation argument fails at construction, not at setup.
        self.train_transform = classification_train_transform(image_size, scale=scale, hflip=hflip)
        self.eval_transform = classification_eval_transform(image_size, resize_size=resize_size)
        # larger images are decoded reduced (the crops and the evaluation resize work at about this size)
        self.max_side = REDUCE_ABOVE * int(resize_size or image_size)
        self._class_names: list[str] | None = None

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (after :meth:`setup`)."""
        if self._class_names is None:
            raise RuntimeError(f"{type(self).__name__}.class_names is known after setup(); call dm.setup('fit') first")
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes (after :meth:`setup`)."""
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        """Scan and check the splits the ``stage`` needs (train for ``fit``; val always) and build datasets."""
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._scan(self.root / self.train_dir, self.train_transform)
        if self.val_dataset is None:
            self.val_dataset = self._scan(self.root / self.val_dir, self.eval_transform)

    def _scan(self, split_dir: Path, transform: Transform) -> ImageFolderDataset:
        samples, classes = scan_image_folder(split_dir, self.requested_classes)
        usable = self._usable([path for path, _ in samples], f"images of {split_dir}")
        samples = [sample for sample, ok in zip(samples, usable) if ok]
        self._set_classes(classes, split_dir)
        return ImageFolderDataset(samples, transform, classes, max_side=self.max_side)

    def _set_classes(self, classes: list[str], split_dir: Path) -> None:
        if self._class_names is None:
            self._class_names = classes
            return
        if classes != self._class_names:
            only_here = sorted(set(classes) - set(self._class_names))
            only_before = sorted(set(self._class_names) - set(classes))
            detail = f"only in {split_dir}: {only_here}; missing from it: {only_before}"
            if not only_here and not only_before:
                detail = "same names in another order"
            raise DataError(f"the classes of {split_dir} differ from those of the other split ({detail})")


class SyntheticClassificationDataModule(GeneratedData, ImageFolderDataModule):
    """The embedded default: the synthetic shapes set (:func:`generate_classification`), read as an ImageFolder.

    The set is generated once, in ``prepare_data`` (Lightning runs it on one process per node), into
    ``root`` or by default into :func:`~vision_tasks.data.synthetic.cache.synthetic_root`, a cache
    folder named after the generation parameters; later runs reuse it. ``synthetic_image_size`` is the
    size of the stored images, ``image_size`` that of the crops fed to the model; ``clutter`` selects
    the harder variant (see :func:`generate_classification`). Other keyword arguments go to
    :class:`ImageFolderDataModule`. The defaults are those of
    ``configs/datamodule/classification_synthetic.yaml``, which also has the model turn the images grey and
    standardise each one (colours are random by construction).

    Hyperparameters (``dm.hparams``, a checkpoint's ``datamodule_hyper_parameters``): the arguments
    of this constructor as given, extra keyword arguments included; ``root`` is None when the cache
    folder is used, so that it is resolved again wherever they are loaded rather than pointing at this
    machine's cache. ``type(dm)(**dm.hparams)`` rebuilds the module.
    """

    synthetic_task = "classification"
    generate = staticmethod(generate_classification)

    def __init__(
        self,
        root: str | None = None,
        *,
        num_train_per_class: int = 300,
        num_val_per_class: int = 50,
        synthetic_image_size: int = 64,
        seed: int = 0,
        clutter: bool = False,
        image_size: int = 64,
        resize_size: int | None = 64,
        scale: tuple[float, float] = (0.7, 1.0),
        batch_size: int = 32,
        num_workers: int = 2,
        **kwargs: Any,
    ) -> None:
        self.generation_params = dict(
            num_train_per_class=num_train_per_class,
            num_val_per_class=num_val_per_class,
            image_size=synthetic_image_size,
            seed=seed,
            clutter=clutter,
        )
        super().__init__(
            self._synthetic_root(root), image_size=image_size, resize_size=resize_size, scale=scale,
            batch_size=batch_size, num_workers=num_workers, **kwargs,
        )
        # This module's own arguments, root as given (None: the cache folder), in place of what
        # ImageFolderDataModule recorded (the resolved folder, and none of the generation arguments).
        self.hparams.clear()
        self.save_hyperparameters(
            dict(
                root=root, num_train_per_class=num_train_per_class, num_val_per_class=num_val_per_class,
                synthetic_image_size=synthetic_image_size, seed=seed, clutter=clutter, image_size=image_size,
                resize_size=resize_size, scale=scale, batch_size=batch_size, num_workers=num_workers, **kwargs,
            )
        )
