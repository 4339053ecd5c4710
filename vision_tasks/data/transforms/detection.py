"""Detection pipelines: images with their boxes and per-box fields, the SSD augmentations.

Detection pipelines carry boxes with their per-box fields::

    out = detection_train_transform(320)(image=rgb, bboxes=xyxy, labels=labels, iscrowd=iscrowd, area=area)
    out["image"], out["bboxes"], out["labels"], out["iscrowd"], out["area"]   # boxes dropped together

Boxes are ``pascal_voc`` (``x0, y0, x1, y1`` in pixels); a box that a crop removes takes its label,
crowd flag and area with it.
"""

from __future__ import annotations

from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops import functional as fcrops
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.bbox_utils import denormalize_bboxes

from .common import MEAN_PIXEL, check_size, to_tensor_tail

__all__ = [
    "BBOX_FIELDS",
    "DETECTION_AUGMENTATIONS",
    "RandomIoUCrop",
    "ZoomOut",
    "detection_eval_transform",
    "detection_train_transform",
]

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
) -> A.Compose:
    """SSD training augmentation ending in an ``image_size x image_size`` resize (see :data:`DETECTION_AUGMENTATIONS`).

    ``"ssd"`` (Liu et al. 2016, section 2.2, as in torchvision's detection references):

    1. photometric distortion: brightness x[0.875, 1.125], contrast x[0.5, 1.5], saturation
       x[0.5, 1.5], hue +-0.05 (18 degrees), each with probability 0.5, in random order;
    2. :class:`ZoomOut`: with probability 0.5, the image on a canvas 1-4 times its size filled with
       the mean pixel (:data:`~vision_tasks.data.transforms.common.MEAN_PIXEL`; small objects for the
       model to see);
    3. :class:`RandomIoUCrop`: the whole image, or a patch (0.3-1 of each side, aspect 1/2-2) whose
       IoU with some box is at least 0.1, 0.3, 0.5, 0.7 or 0.9, or any patch; boxes whose centre
       falls outside the patch are dropped;
    4. horizontal flip with probability 0.5; 5. resize to ``image_size`` square (aspect not kept:
       SSD's fixed-shape resizer).

    ``"ssdlite"`` is 3, 4, 5; ``"flip"`` 4, 5 (for data whose objects already vary in size and
    place, such as the synthetic set); ``"none"`` only 5. Call it with ``image``, ``bboxes``
    (pascal_voc) and the :data:`BBOX_FIELDS`; output image float32 ``(3, image_size, image_size)`` in
    [0, 1] (the models normalise it themselves).
    """
    check_size(image_size, "image_size")
    if augmentation not in DETECTION_AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {DETECTION_AUGMENTATIONS}, got {augmentation!r}")
    steps: list[A.BasicTransform | A.BaseCompose] = []
    if augmentation == "ssd":
        steps += [_photometric_distort(), ZoomOut(side_range=(1.0, 4.0), fill=tuple(255.0 * m for m in MEAN_PIXEL), p=0.5)]
    if augmentation in ("ssd", "ssdlite"):
        steps.append(RandomIoUCrop())
    if augmentation != "none":
        steps.append(A.HorizontalFlip(p=0.5))
    resize = A.Resize(image_size, image_size)
    return _detection_compose([*steps, resize, *to_tensor_tail()])


def detection_eval_transform(image_size: int) -> A.Compose:
    """Deterministic evaluation: resize to ``image_size x image_size`` (as training ends).

    Boxes are scaled with the image; the model maps its predictions back to the original image
    (``model(images, original_sizes=...)``). Output image float32 ``(3, image_size, image_size)`` in [0, 1].
    """
    check_size(image_size, "image_size")
    resize = A.Resize(image_size, image_size)
    return _detection_compose([resize, *to_tensor_tail()])


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
    ``fill`` (SSD: the mean pixel, so that after normalisation the border is near zero); followed
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
