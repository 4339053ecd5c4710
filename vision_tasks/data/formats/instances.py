"""COCO instance masks, and the labels of every head that follow from them (the multi-task data).

A COCO instances file with ``segmentation`` entries (polygons, RLE, compressed RLE) carries every label
type the three heads need: the boxes (detection), the instance masks, from which the class-index mask
follows (segmentation: each instance's category painted, background 0), and the image labels (which
classes are present: multi-label classification). :func:`~vision_tasks.data.formats.coco.read_coco_instances`
reads such a file into :class:`InstanceRecord` s; :class:`MultiTaskDataset` serves them and
:func:`multitask_collate` batches them.

The class-index mask of an image (:func:`semantic_mask`) follows torchvision's COCO segmentation reference
(``references/segmentation/coco_utils.py``): class ``label + 1`` where one category's instances cover the
pixel, :data:`~vision_tasks.data.common.IGNORE_INDEX` (255) where instances of different categories overlap
and on crowd regions (``iscrowd``: a group of objects, no instance outline), 0 elsewhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..common import IGNORE_INDEX, Transform
from ..errors import DataError
from .detection import DetectionDataset, DetectionRecord, detection_collate

__all__ = [
    "InstanceRecord",
    "MultiTaskDataset",
    "decode_segmentation",
    "image_labels",
    "instance_record",
    "multitask_collate",
    "semantic_mask",
]


@dataclasses.dataclass(frozen=True, eq=False)
class InstanceRecord(DetectionRecord):
    """A :class:`DetectionRecord` with each box's COCO ``segmentation`` (same order as ``boxes``)."""

    segmentations: tuple[Any, ...] = ()


def instance_record(record: DetectionRecord, segmentations: Sequence[Any], source: Path) -> InstanceRecord:
    """``record`` with ``segmentations``, each checked to be polygons or (compressed) RLE.

    Raises:
        DataError: naming ``source`` and the image, when an annotation has no ``segmentation`` (a file with
            boxes only) or one pycocotools cannot read.
    """
    for segmentation in segmentations:
        problem = _segmentation_problem(segmentation, record.height, record.width)
        if problem:
            raise DataError(f"{source}: an annotation of image {record.image_id} ({record.path.name}) {problem}; "
                            "the multi-task data needs an instance mask ('segmentation': polygons or RLE) per box")
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(DetectionRecord)}
    return InstanceRecord(**fields, segmentations=tuple(segmentations))


def _segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    if segmentation is None or segmentation == [] or segmentation == {}:
        return "has no 'segmentation'"
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and isinstance(counts, (str, list))):
            return f"has an RLE 'segmentation' without 'size' [h, w] and 'counts' ({str(segmentation)[:80]})"
        if [int(v) for v in size] != [height, width]:
            return f"has an RLE 'segmentation' of size {size}, not the image's [{height}, {width}]"
        return None
    if isinstance(segmentation, list) and all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(isinstance(v, (int, float)) for v in p)
        for p in segmentation
    ):
        return None
    return f"has a 'segmentation' that is neither polygons [[x, y, ...]] nor RLE ({str(segmentation)[:80]})"


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The boolean ``(height, width)`` mask of a COCO ``segmentation`` (polygons, RLE or compressed RLE)."""
    if isinstance(segmentation, list):  # polygons: one RLE each, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def semantic_mask(record: InstanceRecord) -> np.ndarray:
    """The uint8 class-index mask ``(height, width)`` of ``record``: 0 background, ``label + 1`` where the
    instances of one category cover the pixel, :data:`IGNORE_INDEX` where instances of different categories
    overlap and on crowd regions (see the module docstring)."""
    height, width = record.height, record.width
    mask = np.zeros((height, width), dtype=np.uint8)
    claimed = np.zeros((height, width), dtype=bool)
    conflict = np.zeros((height, width), dtype=bool)
    crowd = np.zeros((height, width), dtype=bool)
    for segmentation, label, iscrowd in zip(record.segmentations, record.labels.tolist(), record.iscrowd.tolist()):
        instance = decode_segmentation(segmentation, height, width)
        if iscrowd:
            crowd |= instance
            continue
        value = label + 1
        conflict |= instance & claimed & (mask != value)
        mask[instance] = value
        claimed |= instance
    mask[conflict | crowd] = IGNORE_INDEX
    return mask


def image_labels(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """The multi-hot float32 vector ``(num_classes,)`` of the classes among ``labels`` (which classes are present)."""
    vector = np.zeros(num_classes, dtype=np.float32)
    vector[np.asarray(labels, dtype=np.int64)] = 1.0
    return vector


class MultiTaskDataset(DetectionDataset):
    """``(image, target)`` pairs of :class:`InstanceRecord` s with the labels of every head.

    The image and the detection fields of ``target`` are those of :class:`DetectionDataset` (the same
    ``transform``, which moves the class-index mask with the image and the boxes: albumentations' ``mask``);
    ``target`` adds ``mask``, the class-index mask (int64 ``(H, W)`` at the transformed image's size, see
    :func:`semantic_mask`), and ``image_labels``, the multi-hot vector (float32 ``(num_classes,)``) of the classes
    of the boxes left after the transform, crowd regions included (a crop may remove an object).

    Args:
        records: e.g. ``read_coco_instances(...).records``.
        num_classes: the number of (foreground) classes.
        transform, max_side: as in :class:`DetectionDataset`.
    """

    def __init__(self, records: Sequence[InstanceRecord], num_classes: int, transform: Transform | None = None, *,
                 max_side: int | None = None) -> None:
        super().__init__(records, transform, max_side=max_side)
        self.num_classes = int(num_classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.records[index]
        image, boxes = self.load(record)
        extra = {}
        if isinstance(record, InstanceRecord):  # a file of boxes only has no masks
            mask = semantic_mask(record)
            if mask.shape != image.shape[:2]:  # the image was decoded reduced: the mask follows
                mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
            extra["mask"] = mask
        tensor, target, extra = self.transformed(record, image, boxes, **extra)
        if "mask" in extra:
            target["mask"] = torch.as_tensor(np.asarray(extra["mask"])).long()
        target["image_labels"] = torch.from_numpy(image_labels(target["labels"].numpy(), self.num_classes))
        return tensor, target


def multitask_collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Stack the images ``(N, 3, H, W)``; the targets by head: ``detection`` the list of detection targets,
    ``segmentation`` the stacked class-index masks ``(N, H, W)`` int64 (``None`` for data without masks),
    ``classification`` the stacked image labels ``(N, C)`` float32."""
    images, targets = detection_collate(batch)
    masks = [t.pop("mask", None) for t in targets]
    labels = torch.stack([t.pop("image_labels") for t in targets])
    masks = None if any(m is None for m in masks) else torch.stack(masks)  # None: data without masks
    return images, {"classification": labels, "detection": targets, "segmentation": masks}
