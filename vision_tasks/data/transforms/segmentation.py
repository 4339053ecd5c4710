"""Segmentation pipelines: images with their class masks, DeepLab's augmentation.

Segmentation pipelines carry a class mask (uint8 ``(H, W)``, 255 = ignore), resampled with nearest
neighbours so that no new class values appear; padding fills it with 255::

    out = segmentation_train_transform(513)(image=rgb, mask=mask)
    out["image"], out["mask"]          # float32 (3, 513, 513) in [0, 1], uint8 (513, 513)
"""

from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2

from ..common import IGNORE_INDEX
from .common import MEAN_PIXEL, check_size, to_tensor_tail

__all__ = ["segmentation_eval_transform", "segmentation_train_transform"]


def segmentation_train_transform(
    crop_size: int,
    *,
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
) -> A.Compose:
    """DeepLab's training augmentation: random scale, pad, random ``crop_size`` square crop, flip.

    As TF DeepLab (``input_preprocess.preprocess_image_and_label``) and the PyTorch DeepLab ports:

    1. the image and mask scaled by a factor uniform in ``scale_range`` (bilinear for the image,
       nearest for the mask);
    2. padded bottom/right to at least ``crop_size`` in each side, the image with the mean pixel
       (:data:`~vision_tasks.data.transforms.common.MEAN_PIXEL`), the mask with 255 (ignored by the loss);
    3. a random ``crop_size x crop_size`` crop; 4. horizontal flip with probability ``hflip``.

    The image is turned into [0, 1] floats first, so the geometric steps interpolate and pad
    without rounding to uint8. Call it with ``image`` (uint8 HWC RGB) and ``mask`` (uint8 ``(H, W)``);
    output image float32 ``(3, crop_size, crop_size)`` in [0, 1], mask uint8 ``(crop_size, crop_size)``
    with values from the input mask and 255.
    """
    check_size(crop_size, "crop_size")
    low, high = _check_scale_range(scale_range)
    if not 0 <= hflip <= 1:
        raise ValueError(f"hflip is a probability, got {hflip}")
    to_float, to_tensor = to_tensor_tail()
    steps = [
        to_float,
        A.RandomScale(
            scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
        A.PadIfNeeded(
            min_height=crop_size, min_width=crop_size, position="top_left", border_mode=cv2.BORDER_CONSTANT,
            fill=MEAN_PIXEL, fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(height=crop_size, width=crop_size),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    return A.Compose([*steps, to_tensor])


def segmentation_eval_transform() -> A.Compose:
    """Evaluation: the whole image at its own size, as [0, 1] floats (and its mask, untouched).

    Segmentation is scored on every pixel of the original image, so nothing is resized, cropped or
    padded here: the model pads a batch of images of different sizes and crops its predictions back
    (:meth:`vision_tasks.models.DeepLabV3MobileNetV2.segment`, with the task's ``eval_pad_size``).
    The pipeline also takes an image alone (prediction). Output image float32 ``(3, H, W)``, mask
    uint8 ``(H, W)``.
    """
    return A.Compose(to_tensor_tail())


def _check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range!r}") from None
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {tuple(scale_range)}")
    return low, high
