"""What every detection format shares: the records, the dataset, the batching, the box checks.

The readers (:func:`~vision_tasks.data.formats.coco.read_coco`,
:func:`~vision_tasks.data.formats.voc_xml.read_voc`) check what they read before training and raise
:class:`DataError` naming the file and the reason; both produce the same
:class:`DetectionAnnotations`, so the rest of the pipeline does not know the format.

Boxes are xyxy in pixels of the image on disk (continuous coordinates: a box covering pixel
columns 0..9 spans x 0..10). Categories are mapped to contiguous foreground labels ``0..C-1`` and
back with ``category_ids``. Boxes partly outside their image are clipped, boxes with no width or
height (or nothing inside the image) are dropped, both counted in one warning per file
(:func:`sanitize_boxes`); images without boxes are kept as negatives.

:class:`DetectionDataset` returns ``(image, target)``: image float32 ``(3, H, W)``; target a dict
with ``boxes`` float32 ``(K, 4)`` xyxy in pixels of the transformed image, ``labels`` int64 ``(K,)``,
``iscrowd`` int64 ``(K,)`` (COCO crowd regions, VOC ``difficult`` objects: ignored by evaluation and
by training matches), ``area`` float32 ``(K,)`` (the annotation's area in original pixels),
``image_id`` int, ``orig_size`` int64 ``(2,)`` = (height, width) of the image on disk, and
``annotations``, the record's own boxes in the pixels of the image on disk with their ``labels``,
``iscrowd`` and ``area`` (what evaluation compares the model's detections with: the model maps them
back to the image on disk itself). :func:`detection_collate` stacks the images and lists the targets.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..common import Transform, listing, load_rgb, reduced_size
from ..errors import DataError

__all__ = [
    "DetectionAnnotations",
    "DetectionDataset",
    "DetectionRecord",
    "check_images_exist",
    "detection_collate",
    "detection_record",
    "group_by_image",
    "sanitize_boxes",
]

Target = dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class DetectionRecord:
    """One image and its boxes, as read from the annotation file (pixels of the image on disk).

    ``boxes`` float32 ``(K, 4)`` xyxy; ``labels`` int64 ``(K,)`` contiguous labels; ``iscrowd`` int64
    ``(K,)`` 0/1; ``area`` float32 ``(K,)``; ``image_id`` the dataset's own id.
    """

    path: Path
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray


@dataclasses.dataclass(eq=False)
class DetectionAnnotations:
    """What a reader found: one :class:`DetectionRecord` per image, and the categories.

    ``class_names[label]`` and ``category_ids[label]`` are the name and the dataset's own id of
    contiguous label ``label``.
    """

    records: list[DetectionRecord]
    class_names: list[str]
    category_ids: list[int]

    def to_coco(self) -> dict[str, Any]:
        """The annotations as a COCO instances dict (``pycocotools.coco.COCO`` and ``COCOeval`` read it).

        Images keep their ids, boxes become ``[x, y, w, h]`` with their ``area`` and ``iscrowd``
        (COCOeval ignores detections matched to crowd regions, which is how VOC treats ``difficult``),
        categories their ids and names. Annotation ids run from 1.
        """
        images, annotations = [], []
        for record in self.records:
            images.append(
                {"id": record.image_id, "file_name": record.path.name, "height": record.height, "width": record.width}
            )
            for box, label, crowd, area in zip(
                record.boxes.tolist(), record.labels.tolist(), record.iscrowd.tolist(), record.area.tolist()
            ):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": self.category_ids[label],
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "area": area,
                        "iscrowd": crowd,
                    }
                )
        categories = [{"id": i, "name": name} for i, name in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

# --------------------------------------------------------------------------------------------------
# Checks and records shared by the readers


def check_images_exist(listed_in: Path, image_dir: Path, file_names: Sequence[str]) -> None:
    if not image_dir.is_dir():
        raise DataError(f"the image folder {image_dir} of {listed_in} does not exist")
    missing = [name for name in file_names if not (image_dir / name).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(file_names)} images listed in {listed_in} are missing from {image_dir}: "
            f"{listing(missing)}"
        )



def sanitize_boxes(
    boxes: np.ndarray, sizes: np.ndarray, source: Path, split: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy ``boxes`` (N, 4) to their image ``sizes`` (N, 2) = (height, width); mark degenerate ones.

    Returns the clipped boxes and the mask of boxes to keep; warns once with both counts.
    """
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, sizes[:, 1:2])
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, sizes[:, 0:1])
    positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # NaN compares False: dropped
    keep = positive & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    num_dropped = int((~keep).sum())
    num_clipped = int((keep & np.any(clipped != boxes, axis=1)).sum())
    if num_dropped or num_clipped:
        where = f"{source} ({split})" if split else str(source)
        warnings.warn(
            f"{where}: dropped {num_dropped} box(es) with zero or negative width or height or entirely outside "
            f"their image; clipped {num_clipped} box(es) partly outside their image",
            stacklevel=3,
        )
    return clipped, keep


def group_by_image(rows: np.ndarray, num_images: int) -> list[np.ndarray]:
    """For each image ``0..num_images-1``, the indices of the boxes whose row is it (rows < 0: none), in order."""
    order = np.argsort(rows, kind="stable")
    starts = np.searchsorted(rows[order], np.arange(num_images + 1))
    return [order[starts[i] : starts[i + 1]] for i in range(num_images)]


def detection_record(
    path: Path, image_id: int, height: int, width: int, boxes: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray,
    area: np.ndarray,
) -> DetectionRecord:
    return DetectionRecord(
        path=path, image_id=int(image_id), height=int(height), width=int(width),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=np.asarray(labels, dtype=np.int64),
        iscrowd=np.asarray(iscrowd, dtype=np.int64), area=np.asarray(area, dtype=np.float32),
    )

# --------------------------------------------------------------------------------------------------
# Dataset


class DetectionDataset(Dataset):
    """``(image, target)`` pairs of ``records``, through an albumentations detection ``transform``.

    Args:
        records: e.g. ``read_coco(...).records``.
        transform: called as ``transform(image=uint8_hwc_rgb, bboxes=xyxy, labels=..., iscrowd=...,
            area=...)`` (see :func:`~vision_tasks.data.transforms.detection_train_transform`); it
            should end in ``ToTensorV2``. Without one, images come as float ``(3, H, W)`` in ``[0, 1]``
            and boxes unchanged.

    Images are read with :func:`~vision_tasks.data.common.load_rgb` (grayscale, palette and RGBA become
    RGB); one whose longer side exceeds ``max_side`` is decoded reduced to it, its boxes scaled alike
    (``orig_size`` and ``annotations`` stay those of the image on disk). Raises :class:`DataError` naming
    the file if it cannot be read or its size is
    not the one annotated (the boxes would not fit it).
    """

    def __init__(
        self, records: Sequence[DetectionRecord], transform: Transform | None = None, *, max_side: int | None = None
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.records[index]
        image, boxes = self.load(record)
        tensor, target, _ = self.transformed(record, image, boxes)
        return tensor, target

    def load(self, record: DetectionRecord) -> tuple[np.ndarray, np.ndarray]:
        """The image of ``record`` (uint8 HWC RGB, reduced to ``max_side``) and its boxes in its pixels."""
        image = load_rgb(record.path, max_side=self.max_side)
        height, width = record.height, record.width
        boxes = record.boxes
        if image.shape[:2] != reduced_size(height, width, self.max_side):
            raise DataError(
                f"image {record.path} is {image.shape[1]}x{image.shape[0]} but its annotation says {width}x{height}"
            )
        if image.shape[:2] != (height, width):  # decoded reduced: the boxes follow
            boxes = boxes * np.array([image.shape[1] / width, image.shape[0] / height] * 2, dtype=np.float32)
        return image, boxes

    def transformed(
        self, record: DetectionRecord, image: np.ndarray, boxes: np.ndarray, **extra: np.ndarray
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        """The image tensor and target after the transform, and the transformed ``extra`` targets (e.g. a
        ``mask``, which albumentations moves with the image and the boxes)."""
        fields = {"labels": record.labels, "iscrowd": record.iscrowd, "area": record.area}
        if self.transform is None:
            tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        else:
            out = self.transform(image=image, bboxes=boxes, **fields, **extra)
            tensor = out["image"]
            boxes = out["bboxes"]
            fields = {name: out[name] for name in fields}
            extra = {name: out[name] for name in extra}
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(fields["labels"], dtype=np.int64)),
            "iscrowd": torch.as_tensor(np.asarray(fields["iscrowd"], dtype=np.int64)),
            "area": torch.as_tensor(np.asarray(fields["area"], dtype=np.float32)),
            "image_id": record.image_id,
            "orig_size": torch.tensor([record.height, record.width], dtype=torch.int64),
            "annotations": {
                "boxes": torch.as_tensor(record.boxes),
                "labels": torch.as_tensor(record.labels),
                "iscrowd": torch.as_tensor(record.iscrowd),
                "area": torch.as_tensor(record.area),
            },
        }
        return tensor, target, extra


def detection_collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack the images of a batch ``(N, 3, H, W)`` and list the targets (their box counts differ)."""
    images, targets = zip(*batch)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"cannot batch images of different sizes {sorted(shapes)}: end the pipeline in a fixed-size resize"
        )
    return torch.stack(images), list(targets)
