"""ImageFolder classification data: ``root/<split>/<class>/*.jpg``, the reader and the dataset.

:func:`scan_image_folder` checks a split before training (folders present, every class has images,
optionally every image decodable) and raises :class:`DataError` naming the path and the
reason; :class:`ImageFolderDataset` serves what it found. The data modules are in
:mod:`vision_tasks.data.modules.classification`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..common import IMAGE_EXTENSIONS, Transform, list_images, load_rgb
from ..verify import verify_images as verify_images_of
from ..errors import DataError

__all__ = ["LAYOUT", "ImageFolderDataset", "scan_image_folder"]

LAYOUT = "root/{train,val}/<class>/*.jpg"

Sample = tuple[Path, int]


class ImageFolderDataset(Dataset):
    """(image, label) pairs read from ``samples``, each image through an albumentations ``transform``.

    Args:
        samples: ``(path, label)`` pairs, e.g. from :func:`scan_image_folder`.
        transform: called as ``transform(image=uint8_hwc_rgb)["image"]``; it should end in
            ``ToTensorV2``. Without one, images come as float ``(3, H, W)`` in ``[0, 1]``.
        class_names: optional, kept for users of the dataset (``label -> name``).
        max_side: images with a longer side are decoded reduced to it (:func:`~vision_tasks.data.common.load_rgb`).

    Returns per item ``(float32 tensor (3, H, W), int label)``.
    """

    def __init__(
        self, samples: Sequence[Sample], transform: Transform | None = None, class_names: Sequence[str] | None = None,
        *, max_side: int | None = None,
    ) -> None:
        self.samples = [(Path(p), int(label)) for p, label in samples]
        self.transform = transform
        self.class_names = list(class_names) if class_names is not None else None
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_rgb(path, max_side=self.max_side)
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

    Classes are the sorted sub-folder names, or ``class_names`` (labels in that order; each must be a
    sub-folder, others are ignored). Images are files ending in one of
    :data:`~vision_tasks.data.common.IMAGE_EXTENSIONS`, any case, found recursively; hidden files and
    folders are skipped, other files are ignored with a warning. With ``verify_images`` every image is
    decoded once (:func:`~vision_tasks.data.verify.verify_images`, cached per file) so that a corrupt file
    fails now, not mid-epoch.

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
        images, others = list_images(split_dir / name)
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
    if verify_images:  # every image decoded once (cached per file): vision_tasks.data.verify
        verify_images_of([path for path, _ in samples], what=f"images of {split_dir}")
    return samples, class_names
