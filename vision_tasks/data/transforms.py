"""albumentations pipelines that turn uint8 HWC RGB arrays into normalised float CHW tensors.

The normalisation (``mean``/``std``) belongs to the weights: the plain models take tensors already
normalised the way they were trained, so the same values must reach training, evaluation, export and
serving. The defaults are ImageNet's, as used by torchvision's and timm's MobileNetV2 weights.

Detection pipelines carry boxes with their per-box fields::

    out = detection_train_transform(320)(image=rgb, bboxes=xyxy, labels=labels, iscrowd=iscrowd, area=area)
    out["image"], out["bboxes"], out["labels"], out["iscrowd"], out["area"]   # boxes dropped together

Boxes are ``pascal_voc`` (``x0, y0, x1, y1`` in pixels); a box that a crop removes takes its label,
crowd flag and area with it.

Segmentation pipelines carry a class mask (uint8 ``(H, W)``, 255 = ignore), resampled with nearest
neighbours so that no new class values appear; padding fills it with 255::

    out = segmentation_train_transform(513)(image=rgb, mask=mask)
    out["image"], out["mask"]          # float32 (3, 513, 513), uint8 (513, 513)
"""

from __future__ import annotations

from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops import functional as fcrops
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.bbox_utils import denormalize_bboxes
from albumentations.pytorch import ToTensorV2

__all__ = [
    "BBOX_FIELDS",
    "DETECTION_AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomIoUCrop",
    "ZoomOut",
    "classification_eval_transform",
    "classification_train_transform",
    "detection_eval_transform",
    "detection_train_transform",
    "segmentation_eval_transform",
    "segmentation_train_transform",
]

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


# --------------------------------------------------------------------------------------------------
# Detection

# Per-box fields that travel with the boxes through a detection pipeline (albumentations label_fields).
BBOX_FIELDS: tuple[str, ...] = ("labels", "iscrowd", "area")

# "ssd": the SSD paper's augmentation (torchvision's "ssd" preset): photometric distortion, zoom-out,
# min-IoU crop, flip. "ssdlite": torchvision's lighter preset and the TF ssdlite_mobilenet_v2 config
# (min-IoU crop, flip). "flip": horizontal flip only. "none": resize only. All end in the same
# fixed-size resize.
DETECTION_AUGMENTATIONS: tuple[str, ...] = ("ssd", "ssdlite", "flip", "none")


def detection_train_transform(
    image_size: int,
    *,
    augmentation: str = "ssd",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalization: str = "standard",
    grayscale: bool = False,
) -> A.Compose:
    """SSD training augmentation ending in an ``image_size x image_size`` resize (see :data:`DETECTION_AUGMENTATIONS`).

    ``"ssd"`` (Liu et al. 2016, section 2.2, as in torchvision's detection references):

    1. photometric distortion: brightness x[0.875, 1.125], contrast x[0.5, 1.5], saturation
       x[0.5, 1.5], hue +-0.05 (18 degrees), each with probability 0.5, in random order;
    2. :class:`ZoomOut`: with probability 0.5, the image on a canvas 1-4 times its size filled with
       ``mean`` (small objects for the model to see);
    3. :class:`RandomIoUCrop`: the whole image, or a patch (0.3-1 of each side, aspect 1/2-2) whose
       IoU with some box is at least 0.1, 0.3, 0.5, 0.7 or 0.9, or any patch; boxes whose centre
       falls outside the patch are dropped;
    4. horizontal flip with probability 0.5; 5. resize to ``image_size`` square (aspect not kept:
       SSD's fixed-shape resizer).

    ``"ssdlite"`` is 3, 4, 5; ``"flip"`` 4, 5 (for data whose objects already vary in size and
    place, such as the synthetic set); ``"none"`` only 5. Then the normalisation tail of the classification
    pipelines (``mean``, ``std``, ``normalization``, ``grayscale``; see
    :func:`classification_train_transform`). Call it with ``image``, ``bboxes`` (pascal_voc) and the
    :data:`BBOX_FIELDS`; output image float32 ``(3, image_size, image_size)``.
    """
    _check_size(image_size, "image_size")
    if augmentation not in DETECTION_AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {DETECTION_AUGMENTATIONS}, got {augmentation!r}")
    steps: list[A.BasicTransform | A.BaseCompose] = []
    if augmentation == "ssd":
        steps += [_photometric_distort(), ZoomOut(side_range=(1.0, 4.0), fill=tuple(255.0 * m for m in mean), p=0.5)]
    if augmentation in ("ssd", "ssdlite"):
        steps.append(RandomIoUCrop())
    if augmentation != "none":
        steps.append(A.HorizontalFlip(p=0.5))
    resize = A.Resize(image_size, image_size)
    return _detection_compose([*steps, resize, *_normalize(mean, std, normalization, grayscale)])


def detection_eval_transform(
    image_size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalization: str = "standard",
    grayscale: bool = False,
) -> A.Compose:
    """Deterministic evaluation: resize to ``image_size x image_size`` (as training ends), normalise.

    Boxes are scaled with the image; map predictions back to the original image with the target's
    ``orig_size``. Output image float32 ``(3, image_size, image_size)``.
    """
    _check_size(image_size, "image_size")
    return _detection_compose([A.Resize(image_size, image_size), *_normalize(mean, std, normalization, grayscale)])


def _detection_compose(steps: list) -> A.Compose:
    # clip=True: boxes touching the border by a rounding error are clipped rather than rejected.
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=list(BBOX_FIELDS), clip=True)
    return A.Compose(steps, bbox_params=bbox_params)


def _photometric_distort() -> A.BaseCompose:
    """SSD's photometric distortion (Caffe SSD's ``distort_param``; torchvision's RandomPhotometricDistort
    without its channel shuffle, which the SSD configs leave off): each jitter alone, p=0.5, random order."""
    identity = dict(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=(0.0, 0.0))
    jitters = [
        dict(brightness=(0.875, 1.125)),
        dict(contrast=(0.5, 1.5)),
        dict(saturation=(0.5, 1.5)),
        dict(hue=(-0.05, 0.05)),
    ]
    return A.RandomOrder([A.ColorJitter(**{**identity, **jitter}, p=0.5) for jitter in jitters], n=len(jitters))


class RandomIoUCrop(BaseCrop):
    """SSD's random crop with a minimum IoU between the patch and some box (torchvision's ``RandomIoUCrop``).

    albumentations 2.0.8 has crops that keep every box (``RandomSizedBBoxSafeCrop``,
    ``BBoxSafeRandomCrop``) or at least one (``AtLeastOneBBoxRandomCrop``), but none that samples a
    patch under an IoU constraint and keeps the boxes whose centre lies in it, so this subclasses its
    ``BaseCrop`` (which crops the image, masks and boxes) and only chooses the patch.

    Each call draws an option from ``sampler_options``: a value >= 1 keeps the whole image; a value
    ``v < 1`` tries up to ``trials`` patches with each side ``min_scale..max_scale`` of the image's and
    aspect ratio (width / height) ``min_aspect_ratio..max_aspect_ratio``, and takes the first one that
    contains the centre of some box and has IoU >= ``v`` with one of those boxes (``v = 0``: any such
    patch). If every trial fails, another option is drawn, as torchvision does. Boxes whose centre
    lies outside the patch are dropped (with their label fields); the others are clipped to it. An
    image without boxes is kept whole.

    The defaults are SSD's (paper section 2.2 and torchvision; the paper's lower scale of 0.1 is 0.3
    in the released implementations).
    """

    # A cap on option draws; it matters only for option lists without a "keep the image" value (>= 1),
    # where a box too small for every option would otherwise loop forever.
    _MAX_OPTION_DRAWS = 100

    def __init__(
        self,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect_ratio: float = 0.5,
        max_aspect_ratio: float = 2.0,
        sampler_options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
        trials: int = 40,
        p: float = 1.0,
    ) -> None:
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
        if not 0 < min_aspect_ratio <= max_aspect_ratio:
            raise ValueError(
                f"need 0 < min_aspect_ratio <= max_aspect_ratio, got {min_aspect_ratio}, {max_aspect_ratio}"
            )
        if not sampler_options or any(v < 0 for v in sampler_options):
            raise ValueError(f"sampler_options must be a non-empty list of IoUs >= 0, got {sampler_options!r}")
        if trials < 1:
            raise ValueError(f"trials must be >= 1, got {trials}")
        super().__init__(p=p)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.min_aspect_ratio, self.max_aspect_ratio = float(min_aspect_ratio), float(max_aspect_ratio)
        self.sampler_options = tuple(float(v) for v in sampler_options)
        self.trials = int(trials)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        whole = (0, 0, width, height)
        bboxes = data.get("bboxes")
        if bboxes is None or len(bboxes) == 0:
            return {"crop_coords": whole}
        boxes = denormalize_bboxes(np.asarray(bboxes)[:, :4], (height, width))
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self._MAX_OPTION_DRAWS):
            min_iou = self.py_random.choice(self.sampler_options)
            if min_iou >= 1.0:
                return {"crop_coords": whole}
            for _ in range(self.trials):
                crop = self._sample_patch(height, width)
                if crop is None:
                    continue
                inside = _centers_inside(centers, crop)
                if inside.any() and _iou_with(boxes[inside], crop).max() >= min_iou:
                    return {"crop_coords": crop}
        return {"crop_coords": whole}

    def _sample_patch(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """A random patch ``(x0, y0, x1, y1)`` within the scale and aspect limits, or None (as torchvision draws it)."""
        new_w = int(width * self.py_random.uniform(self.min_scale, self.max_scale))
        new_h = int(height * self.py_random.uniform(self.min_scale, self.max_scale))
        if new_w < 1 or new_h < 1 or not self.min_aspect_ratio <= new_w / new_h <= self.max_aspect_ratio:
            return None
        left = int((width - new_w) * self.py_random.random())
        top = int((height - new_h) * self.py_random.random())
        return left, top, left + new_w, top + new_h

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        if len(bboxes):
            boxes = denormalize_bboxes(bboxes[:, :4], params["shape"][:2])
            bboxes = bboxes[_centers_inside((boxes[:, :2] + boxes[:, 2:]) / 2, crop_coords)]
        return fcrops.crop_bboxes_by_coords(bboxes, crop_coords, params["shape"][:2])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_scale", "max_scale", "min_aspect_ratio", "max_aspect_ratio", "sampler_options", "trials")


class ZoomOut(A.Pad):
    """SSD's "expand" (torchvision's ``RandomZoomOut``): the image at a random place of a larger canvas.

    The canvas is ``r`` times the image in each side, ``r`` uniform in ``side_range``, filled with
    ``fill`` (SSD: the dataset mean, so that after normalisation the border is near zero); followed
    by a fixed-size resize it shows the model smaller objects. albumentations 2.0.8 has no random
    zoom-out (``Affine``'s scale keeps the canvas size and translates independently of the scale,
    ``CropAndPad`` pads each side independently and changes the aspect ratio), so this subclasses
    ``Pad``, which pads the image, masks, boxes and keypoints, and only draws the padding.
    """

    def __init__(
        self, side_range: tuple[float, float] = (1.0, 4.0), fill: tuple[float, ...] | float = 0, p: float = 0.5
    ) -> None:
        if len(side_range) != 2 or not 1 <= side_range[0] <= side_range[1]:
            raise ValueError(f"side_range must be (low, high) with 1 <= low <= high, got {side_range!r}")
        super().__init__(padding=0, fill=fill, border_mode=cv2.BORDER_CONSTANT, p=p)
        self.side_range = (float(side_range[0]), float(side_range[1]))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, int]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(*self.side_range)
        canvas_w, canvas_h = int(width * ratio), int(height * ratio)
        left = int((canvas_w - width) * self.py_random.random())
        top = int((canvas_h - height) * self.py_random.random())
        right, bottom = canvas_w - width - left, canvas_h - height - top
        return {"pad_top": top, "pad_bottom": bottom, "pad_left": left, "pad_right": right}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("side_range", "fill")


def _centers_inside(centers: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    """Which box centres ``(N, 2)`` lie strictly inside the patch ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = crop
    return (x0 < centers[:, 0]) & (centers[:, 0] < x1) & (y0 < centers[:, 1]) & (centers[:, 1] < y1)


def _iou_with(boxes: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    """IoU of each box ``(N, 4)`` xyxy with the patch."""
    x0, y0, x1, y1 = crop
    inter_w = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    inter_h = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    inter = inter_w * inter_h
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (areas + (x1 - x0) * (y1 - y0) - inter)


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


# --------------------------------------------------------------------------------------------------
# Segmentation

# The mask value that padding writes and the losses and metrics skip (Pascal VOC's "void").
IGNORE_INDEX = 255  # mask value of pixels no loss or metric counts (VOC's "void" border, padding)


def segmentation_train_transform(
    crop_size: int,
    *,
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalization: str = "standard",
    grayscale: bool = False,
) -> A.Compose:
    """DeepLab's training augmentation: random scale, pad, random ``crop_size`` square crop, flip.

    As TF DeepLab (``input_preprocess.preprocess_image_and_label``) and the PyTorch DeepLab ports:

    1. the image and mask scaled by a factor uniform in ``scale_range`` (bilinear for the image,
       nearest for the mask);
    2. padded bottom/right to at least ``crop_size`` in each side, the image with the mean pixel,
       the mask with 255 (ignored by the loss);
    3. a random ``crop_size x crop_size`` crop; 4. horizontal flip with probability ``hflip``.

    The image is normalised first (grey conversion, ``mean``/``std`` or per-image statistics; see
    :func:`classification_train_transform`), so the geometric steps run on normalised values and
    pad with 0: exactly the mean pixel under ``"standard"`` normalisation (uint8 padding would round
    it), and under ``"image"`` normalisation the statistics are those of the whole image, as at
    evaluation, not of a crop that is mostly padding. Call it with ``image`` (uint8 HWC RGB) and
    ``mask`` (uint8 ``(H, W)``); output image float32 ``(3, crop_size, crop_size)``, mask uint8
    ``(crop_size, crop_size)`` with values from the input mask and 255.
    """
    _check_size(crop_size, "crop_size")
    low, high = _check_scale_range(scale_range)
    if not 0 <= hflip <= 1:
        raise ValueError(f"hflip is a probability, got {hflip}")
    *normalize, to_tensor = _normalize(mean, std, normalization, grayscale)
    steps = [
        *normalize,
        A.RandomScale(
            scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
        A.PadIfNeeded(
            min_height=crop_size, min_width=crop_size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0,
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(height=crop_size, width=crop_size),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    return A.Compose([*steps, to_tensor])


def segmentation_eval_transform(
    *,
    pad_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalization: str = "standard",
    grayscale: bool = False,
) -> A.Compose:
    """Evaluation: the whole image at its own size, normalised; optionally padded to ``pad_size``.

    Segmentation is scored on every pixel of the original image, so nothing is resized or cropped.
    With ``pad_size`` the normalised image is padded bottom/right with 0 (the mean pixel under
    ``"standard"`` normalisation) and the mask with 255 to at least ``pad_size`` in each side, as
    TF DeepLab evaluates Pascal VOC at 513 x 513: batches of one shape, and the padding is ignored
    by the metrics (crop predictions to the image before showing them). Images larger than
    ``pad_size`` keep their size. Without ``pad_size``, batches of different sizes are padded by
    :func:`~vision_tasks.data.segmentation.segmentation_collate` the same way. The pipeline also
    takes an image alone (prediction). Output image float32 ``(3, H', W')``, mask uint8 ``(H', W')``.
    """
    if pad_size is not None:
        _check_size(pad_size, "pad_size")
    *normalize, to_tensor = _normalize(mean, std, normalization, grayscale)
    pad = []
    if pad_size is not None:
        pad.append(
            A.PadIfNeeded(
                min_height=pad_size, min_width=pad_size, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                fill=0, fill_mask=IGNORE_INDEX,
            )
        )
    return A.Compose([*normalize, *pad, to_tensor])


def _check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range!r}") from None
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {tuple(scale_range)}")
    return low, high
