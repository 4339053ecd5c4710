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
    normalization: str = "standard",
    grayscale: bool = False,
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
            *_normalize(mean, std, normalization, grayscale),
        ]
    )


def classification_eval_transform(
    image_size: int,
    *,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalization: str = "standard",
    grayscale: bool = False,
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
            *_normalize(mean, std, normalization, grayscale),
        ]
    )


def _normalize(mean: Sequence[float], std: Sequence[float], normalization: str, grayscale: bool) -> list:
    """The shared tail of both pipelines: optional grey conversion, normalisation, tensor.

    ``normalization`` is albumentations' ``Normalize`` mode: ``"standard"`` uses ``mean``/``std``
    (those of the weights), ``"image"`` / ``"image_per_channel"`` standardise every image by its own
    statistics. ``grayscale`` keeps 3 channels (the model is unchanged); for data whose colours
    carry no class information, such as the synthetic shapes.
    """
    modes = ("standard", "image", "image_per_channel", "min_max", "min_max_per_channel")
    if normalization not in modes:
        raise ValueError(f"normalization must be one of {modes}, got {normalization!r}")
    gray = [A.ToGray(num_output_channels=3, p=1.0)] if grayscale else []
    return [*gray, A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0, normalization=normalization),
            ToTensorV2()]


def _check_size(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
