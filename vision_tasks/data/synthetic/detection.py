"""The synthetic detection set, written in COCO layout (instances JSON with RLE masks: pycocotools)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..classes import SHAPES
from .cache import GENERATOR_NAME, GENERATOR_VERSION, SPLIT_KEYS, generate_atomically, sample_rng, scene_params
from .drawing import draw_detection_image, mask_bbox

__all__ = ["generate_detection", "write_coco_shapes"]


def generate_detection(
    root: str | os.PathLike[str],
    *,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 128,
    min_objects: int = 1,
    max_objects: int = 4,
    min_size: float = 0.15,
    max_size: float = 0.6,
    max_overlap: float = 0.3,
    seed: int = 0,
    clutter: bool = False,
) -> Path:
    """Write the synthetic shape detection set in COCO layout under ``root``; return ``root``.

    Each image holds ``min_objects..max_objects`` shapes of :data:`SHAPES` (see
    :func:`draw_detection_image`; sizes are fractions of ``image_size``; ``min_objects=0`` allows
    images without objects). Every annotation describes what is visible of its shape: ``bbox`` the
    tight box of the pixels with visible coverage > 0.5, ``area`` their count, ``segmentation`` their
    RLE (pycocotools), ``iscrowd`` 0. Categories 1..8 are the shapes in :data:`SHAPES` order,
    supercategory ``"shape"``. ``clutter`` as in
    :func:`~vision_tasks.data.synthetic.classification.generate_classification`.

    Layout: ``root/annotations/instances_{train,val}2017.json``, ``root/{train,val}2017/<id:06d>.png``
    (RGB; image ids from 1), plus ``root/synthetic.json``. Deterministic in ``seed``; an image does not
    depend on how many are generated. Returns at once if ``root`` already holds this very dataset.

    Raises:
        DataError: ``root`` exists with another synthetic dataset, or holds files the generator did
            not write; nothing is overwritten.
        ValueError: a parameter out of range, or a layout the constraints cannot satisfy.
    """
    return write_coco_shapes(
        root, "detection", num_train=num_train, num_val=num_val, image_size=image_size, min_objects=min_objects,
        max_objects=max_objects, min_size=min_size, max_size=max_size, max_overlap=max_overlap, seed=seed,
        clutter=clutter,
    )


def write_coco_shapes(root: str | os.PathLike[str], task: str, **scene: Any) -> Path:
    """Write shape scenes (:func:`draw_detection_image`, parameters :func:`scene_params`) in COCO layout under
    ``root`` as the synthetic data of ``task`` (its manifest's name): one instance annotation per shape with its
    tight box, pixel area and RLE mask. The writer of :func:`generate_detection` and of the multi-task set
    (:func:`~vision_tasks.data.synthetic.multitask.generate_multitask`)."""
    params, counts, layout = scene_params(**scene)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]

    def write(tmp: Path) -> dict[str, Any]:
        (tmp / "annotations").mkdir()
        objects = {}
        for split, count in counts.items():
            folder = tmp / f"{split}2017"
            folder.mkdir()
            images: list[dict[str, Any]] = []
            annotations: list[dict[str, Any]] = []
            for index in range(count):
                image_id = index + 1
                rng = sample_rng(params["seed"], SPLIT_KEYS[split], index)
                image, shapes = draw_detection_image(params["image_size"], rng, **layout)
                file_name = f"{image_id:06d}.png"
                Image.fromarray(image).save(folder / file_name, format="PNG", compress_level=1)
                height, width = image.shape[:2]
                images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
                for label, mask in shapes:
                    annotations.append(_coco_annotation(len(annotations) + 1, image_id, label + 1, mask))
            dataset = {
                "info": {"description": f"synthetic shapes ({GENERATOR_NAME})", "version": str(GENERATOR_VERSION)},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            }
            (tmp / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(dataset))
            objects[split] = len(annotations)
        return {"classes": list(SHAPES), "counts": counts, "objects": objects}

    return generate_atomically(root, task, params, write)


def _coco_annotation(annotation_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict[str, Any]:
    """A COCO instance annotation of a boolean mask: tight xywh box, pixel area, RLE segmentation."""
    x0, y0, x1, y1 = mask_bbox(mask)
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": int(mask.sum()),
        "segmentation": {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "iscrowd": 0,
    }
