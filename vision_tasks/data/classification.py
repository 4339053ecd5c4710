"""ImageFolder classification data: ``root/{train,val}/<class>/*.jpg``, real or synthetic.

:func:`scan_image_folder` checks a split before training (folders present, every class has images,
optionally every image header readable) and raises :class:`DataError` naming the path and the
reason. :class:`ImageFolderDataModule` serves any such folder (ImageNet included);
:class:`SyntheticClassificationDataModule` first generates the embedded shape dataset in the same
layout, then reads it with the very same code.

Example::

    dm = ImageFolderDataModule("~/data/imagenet", image_size=224, batch_size=256)
    dm.setup("fit")
    dm.num_classes, dm.class_names          # 1000, ['n01440764', ...]
    images, labels = next(iter(dm.train_dataloader()))   # (256, 3, 224, 224) float32, (256,) int64
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError
from .loaders import GeneratedData, SplitDataModule
from .transforms import IMAGENET_MEAN, IMAGENET_STD, classification_eval_transform, classification_train_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "SyntheticClassificationDataModule",
    "load_rgb",
    "scan_image_folder",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LAYOUT = "root/{train,val}/<class>/*.jpg"

Sample = tuple[Path, int]
Transform = Callable[..., dict[str, Any]]


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as uint8 ``(H, W, 3)`` RGB; grayscale, palette, 16-bit and alpha images are converted.

    The alpha channel is dropped (as torchvision's ImageFolder loader does). Raises
    :class:`DataError` naming the file if it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            return np.array(_to_rgb(img))  # a writable copy: transforms may work in place
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when such a palette image goes straight to RGB
    elif img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale: scale, don't clip
        values = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(values * (255.0 / peak), 0, 255).astype(np.uint8))
    return img.convert("RGB")


class ImageFolderDataset(Dataset):
    """(image, label) pairs read from ``samples``, each image through an albumentations ``transform``.

    Args:
        samples: ``(path, label)`` pairs, e.g. from :func:`scan_image_folder`.
        transform: called as ``transform(image=uint8_hwc_rgb)["image"]``; it should end in
            ``ToTensorV2``. Without one, images come as float ``(3, H, W)`` in ``[0, 1]``.
        class_names: optional, kept for users of the dataset (``label -> name``).

    Returns per item ``(float32 tensor (3, H, W), int label)``.
    """

    def __init__(
        self, samples: Sequence[Sample], transform: Transform | None = None, class_names: Sequence[str] | None = None
    ) -> None:
        self.samples = [(Path(p), int(label)) for p, label in samples]
        self.transform = transform
        self.class_names = list(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        if self.transform is None:
            tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        else:
            # float32 whatever the pipeline computed in (albumentations' per-image Normalize gives float64)
            tensor = self.transform(image=image)["image"].float()
        return tensor, label


def scan_image_folder(
    split_dir: str | os.PathLike[str], class_names: Sequence[str] | None = None, *, verify_images: bool = False
) -> tuple[list[Sample], list[str]]:
    """List the images of one ImageFolder split: ``split_dir/<class>/**/<image>``.

    Classes are the sorted sub-folder names, or ``class_names`` (labels in that order; each must be
    a sub-folder, others are ignored). Images are files ending in one of :data:`IMAGE_EXTENSIONS`,
    any case, found recursively; hidden files and folders are skipped, other files are ignored with
    a warning. With ``verify_images`` every image's header is read (a few tens of microseconds per
    file, much less than decoding) so that a corrupt file fails now, not mid-epoch.

    Returns:
        ``(samples, class_names)``: ``(path, label)`` sorted by class then path, and the class names.

    Raises:
        DataError: naming the path: missing folder, no class folders, a class without images, an
            unreadable image.
    """
    split_dir = Path(split_dir).expanduser()
    if not split_dir.is_dir():
        raise DataError(f"image folder {split_dir} does not exist or is not a folder; expected the layout {LAYOUT}")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        if not found:
            raise DataError(f"{split_dir} has no class sub-folders; expected the layout {LAYOUT}")
        class_names = found
    else:
        class_names = list(class_names)
        missing = [name for name in class_names if name not in found]
        if missing:
            raise DataError(f"{split_dir} has no folder for the class(es) {missing}; expected the layout {LAYOUT}")
    samples: list[Sample] = []
    empty: list[str] = []
    ignored: list[Path] = []
    for label, name in enumerate(class_names):
        images, others = _list_images(split_dir / name)
        if not images:
            empty.append(str(split_dir / name))
        samples += [(path, label) for path in images]
        ignored += others
    if empty:
        raise DataError(f"class folder(s) with no images ({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}")
    if ignored:
        warnings.warn(
            f"{split_dir}: ignored {len(ignored)} file(s) that are not images, e.g. {ignored[0]}", stacklevel=2
        )
    if verify_images:
        _verify_headers([path for path, _ in samples])
    return samples, class_names


def _list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (recursively, following links, sorted) and the other files."""
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(Path(dirpath) / name)
    return sorted(images), others


def _verify_headers(paths: Sequence[Path], max_listed: int = 10) -> None:
    """Open every image's header (threads: the cost is file-system latency); raise listing bad files."""
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        for chunk in _chunks(paths, 4096):  # bounded number of pending futures, even for ImageNet
            failures += [f for f in pool.map(_header_error, chunk) if f is not None]
    if failures:
        listed = "\n  ".join(failures[:max_listed])
        more = f"\n  ... and {len(failures) - max_listed} more" if len(failures) > max_listed else ""
        raise DataError(f"{len(failures)} unreadable image(s):\n  {listed}{more}")


def _header_error(path: Path) -> str | None:
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{path}: {exc}"
    return None if width > 0 and height > 0 else f"{path}: empty image ({width}x{height})"


def _chunks(items: Iterable[Path], size: int) -> Iterable[list[Path]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class ImageFolderDataModule(SplitDataModule):
    """Train/val loaders over ``root/{train_dir,val_dir}/<class>/*.jpg`` (ImageNet or any ImageFolder).

    ``setup`` scans and checks the splits (see :func:`scan_image_folder`) and requires the same
    classes in both; ``test`` and ``predict`` use the val split.

    Args:
        root: dataset folder (``~`` is expanded).
        train_dir, val_dir: split sub-folders.
        image_size: side of the square crops fed to the model.
        resize_size: evaluation resize of the shorter side (default ``image_size / 0.875``).
        scale, hflip: training augmentation (see :func:`classification_train_transform`).
        mean, std: normalisation, that of the weights being trained or fine-tuned.
        batch_size, num_workers: of every loader.
        verify_images: read every image header during ``setup``.
        class_names: use these classes, in this label order, instead of all sub-folders.
        normalization, grayscale: see :func:`~vision_tasks.data.transforms.classification_train_transform`.
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
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        batch_size: int = 64,
        num_workers: int = 2,
        verify_images: bool = True,
        class_names: list[str] | None = None,
        normalization: str = "standard",
        grayscale: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.train_dir, self.val_dir = train_dir, val_dir
        self.verify_images = verify_images
        self.requested_classes = list(class_names) if class_names is not None else None
        # Built now so that a bad augmentation argument fails at construction, not at setup.
        norm = dict(mean=mean, std=std, normalization=normalization, grayscale=grayscale)
        self.train_transform = classification_train_transform(image_size, scale=scale, hflip=hflip, **norm)
        self.eval_transform = classification_eval_transform(image_size, resize_size=resize_size, **norm)
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
        samples, classes = scan_image_folder(split_dir, self.requested_classes, verify_images=self.verify_images)
        self._set_classes(classes, split_dir)
        return ImageFolderDataset(samples, transform, classes)

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
    ``root`` or by default into :func:`synthetic_root`, a cache folder named after the generation
    parameters; later runs reuse it. ``synthetic_image_size`` is the size of the stored images,
    ``image_size`` that of the crops fed to the model; ``clutter`` selects the harder variant (see
    :func:`generate_classification`). Other keyword arguments go to
    :class:`ImageFolderDataModule`. The defaults are those of ``configs/datamodule/classification/synthetic.yaml``:
    colours are random by construction, so images are turned grey and standardised one by one.
    """

    synthetic_task = "classification"

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
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.25, 0.25, 0.25),
        batch_size: int = 32,
        num_workers: int = 2,
        grayscale: bool = True,
        normalization: str = "image",
        **kwargs: Any,
    ) -> None:
        self.generation_params = dict(
            num_train_per_class=num_train_per_class,
            num_val_per_class=num_val_per_class,
            image_size=synthetic_image_size,
            seed=seed,
            clutter=clutter,
        )
        # A new name, not `root =`: save_hyperparameters() reads this frame's arguments, and should
        # record None (resolved on the machine that loads them), not this machine's cache path.
        resolved = self._synthetic_root(root)
        super().__init__(
            resolved, image_size=image_size, resize_size=resize_size, scale=scale, mean=mean, std=std,
            batch_size=batch_size, num_workers=num_workers, grayscale=grayscale, normalization=normalization, **kwargs,
        )
