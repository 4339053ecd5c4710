"""Classification pipelines: albumentations ``Compose`` from uint8 HWC RGB arrays to float CHW tensors in [0, 1]."""

from __future__ import annotations

import albumentations as A

from .common import check_size, to_tensor_tail

__all__ = ["EVAL_CROP_RATIO", "classification_eval_transform", "classification_train_transform"]

# The standard evaluation crop ratio (ImageNet: resize the shorter side to 256, center-crop 224).
EVAL_CROP_RATIO = 0.875


def classification_train_transform(
    image_size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
) -> A.Compose:
    """Inception-style training augmentation: random resized crop to ``image_size``, horizontal flip.

    ``scale`` is the range of the crop's area as a fraction of the image ((0.08, 1.0) is the
    ImageNet recipe; small models and small images train better with a milder lower bound);
    ``hflip`` the flip probability. Output: float32 ``(3, image_size, image_size)`` in [0, 1].
    """
    check_size(image_size, "image_size")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
    if not 0 <= hflip <= 1:
        raise ValueError(f"hflip is a probability, got {hflip}")
    return A.Compose(
        [
            A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(scale)),
            A.HorizontalFlip(p=hflip),
            *to_tensor_tail(),
        ]
    )


def classification_eval_transform(
    image_size: int,
    *,
    resize_size: int | None = None,
) -> A.Compose:
    """Deterministic evaluation: shorter side to ``resize_size``, center crop ``image_size``.

    ``resize_size`` defaults to ``round(image_size / 0.875)`` (256 for 224); set it equal to
    ``image_size`` to keep the whole image. Output: float32 ``(3, image_size, image_size)`` in [0, 1].
    """
    check_size(image_size, "image_size")
    resize_size = round(image_size / EVAL_CROP_RATIO) if resize_size is None else resize_size
    check_size(resize_size, "resize_size")
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size}) to center-crop")
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=resize_size),
            A.CenterCrop(height=image_size, width=image_size),
            *to_tensor_tail(),
        ]
    )
