"""What the classification, detection and segmentation pipelines share: the tail that makes tensors.

The pipelines only augment: they end in float tensors in [0, 1]. The normalisation (mean/std,
per-image statistics, grey conversion) belongs to the weights and lives in the models
(:class:`vision_tasks.models.ImagePreprocessing`), so that training, evaluation, export and serving
cannot disagree about it.
"""

from __future__ import annotations

import albumentations as A
from albumentations.pytorch import ToTensorV2

from backbones import IMAGENET_MEAN

__all__ = ["MEAN_PIXEL", "check_size", "to_tensor_tail"]

# What augmentations that invent pixels fill them with (SSD's zoom-out canvas, DeepLab's crop padding):
# the mean pixel of natural images, in [0, 1] units (ImageNet's; TF's 0.5 grey is close to it).
MEAN_PIXEL: tuple[float, float, float] = IMAGENET_MEAN


def to_tensor_tail() -> list:
    """The shared tail of every pipeline: float32 in [0, 1] (uint8 / 255), then a ``(3, H, W)`` tensor."""
    return [A.ToFloat(max_value=255.0), ToTensorV2()]


def check_size(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
