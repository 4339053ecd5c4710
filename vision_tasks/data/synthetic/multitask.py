"""The synthetic multi-task set: shape scenes in COCO layout with instance masks, every label type in one file.

The scenes, the drawing and the writer are the detection set's (:func:`~.detection.write_coco_shapes`): each
shape is an instance annotation with its tight box and its RLE mask, from which the readers derive the other
labels (:mod:`vision_tasks.data.formats.instances`): the class-index mask (each instance's category painted,
background 0) and the image labels (which classes are present). Its defaults are the segmentation set's
scenes (1-3 shapes of 0.25-0.6 of the side), so that the joint model is measured on the data of the
single-task defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

from .detection import write_coco_shapes

__all__ = ["generate_multitask"]


def generate_multitask(
    root: str | os.PathLike[str],
    *,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 128,
    min_objects: int = 1,
    max_objects: int = 3,
    min_size: float = 0.25,
    max_size: float = 0.6,
    max_overlap: float = 0.3,
    seed: int = 0,
    clutter: bool = False,
) -> Path:
    """Write the synthetic multi-task set in COCO layout under ``root``; return ``root``.

    Same layout and annotations as :func:`~vision_tasks.data.synthetic.detection.generate_detection`
    (``root/annotations/instances_{train,val}2017.json`` with an RLE ``segmentation`` per instance,
    ``root/{train,val}2017/<id:06d>.png``, ``root/synthetic.json``), under its own manifest task
    ``"multitask"``, so that its cache folder is its own. Instance masks are what is visible of each shape
    (coverage > 0.5), so they never overlap.

    Raises:
        DataError: ``root`` exists with another synthetic dataset, or holds files the generator did not
            write; nothing is overwritten.
        ValueError: a parameter out of range, or a layout the constraints cannot satisfy.
    """
    return write_coco_shapes(
        root, "multitask", num_train=num_train, num_val=num_val, image_size=image_size, min_objects=min_objects,
        max_objects=max_objects, min_size=min_size, max_size=max_size, max_overlap=max_overlap, seed=seed,
        clutter=clutter,
    )
