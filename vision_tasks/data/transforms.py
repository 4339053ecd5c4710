"""albumentations pipelines that turn uint8 HWC RGB arrays into normalised float CHW tensors.

The normalisation (``mean``/``std``) belongs to the weights: the plain models take tensors already
normalised the way they were trained, so the same values must reach training, evaluation, export and
serving. The defaults are ImageNet's, as used by torchvision's and timm's MobileNetV2 weights.
"""

from __future__ import annotations

from typing import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "classification_eval_transform", "classification_train_transform"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# The standard evaluation crop ratio (ImageNet: resize the shorter side to 256, center-crop 224).
EVAL_CROP_RATIO = 0.875


def classification_train_transform(
    image_size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Inception-style training augmentation: random resized crop to ``image_size``, horizontal flip.

    ``scale`` is the range of the crop's area as a fraction of the image ((0.08, 1.0) is the
    ImageNet recipe; small models and small images train better with a milder lower bound);
    ``hflip`` the flip probability. Output: float32 ``(3, image_size, image_size)``.
    """
    _check_size(image_size, "image_size")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
    if not 0 <= hflip <= 1:
        raise ValueError(f"hflip is a probability, got {hflip}")
    return A.Compose(
        [
            A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(scale)),
            A.HorizontalFlip(p=hflip),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )


def classification_eval_transform(
    image_size: int,
    *,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Deterministic evaluation: shorter side to ``resize_size``, center crop ``image_size``.

    ``resize_size`` defaults to ``round(image_size / 0.875)`` (256 for 224); set it equal to
    ``image_size`` to keep the whole image. Output: float32 ``(3, image_size, image_size)``.
    """
    _check_size(image_size, "image_size")
    resize_size = round(image_size / EVAL_CROP_RATIO) if resize_size is None else resize_size
    _check_size(resize_size, "resize_size")
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size}) to center-crop")
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=resize_size),
            A.CenterCrop(height=image_size, width=image_size),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )


def _check_size(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
