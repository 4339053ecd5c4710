"""Class lists and palettes: Pascal VOC's classes and colour map, and the synthetic shapes."""

from __future__ import annotations

import numpy as np

__all__ = ["SHAPES", "VOC_CLASSES", "VOC_SEG_CLASSES", "voc_colormap"]

# The 20 Pascal VOC classes, in the usual label order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# The 21 Pascal VOC segmentation classes: mask value i is VOC_SEG_CLASSES[i].
VOC_SEG_CLASSES: tuple[str, ...] = ("background", *VOC_CLASSES)

# The classes of the synthetic datasets (vision_tasks.data.synthetic), in label order. Each is
# recognisable from its outline alone.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star", "hexagon", "crescent")


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: uint8 ``(n, 3)``, the RGB colour of class index ``i`` in row ``i``.

    VOC's rule (``VOCdevkit/VOCcode/VOClabelcolormap.m``): bits 0, 1, 2 of the index go to the most
    significant bit of R, G, B, bits 3, 4, 5 to the next, and so on. Index 0 is black, 1
    ``(128, 0, 0)`` (aeroplane), 15 ``(192, 128, 128)`` (person), 255 ``(224, 224, 192)`` (ignore).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 256:
        raise ValueError(f"n must be an integer in 1..256, got {n!r}")
    index = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):  # bit group j of the index: bits 3j, 3j+1, 3j+2
        for channel in range(3):
            cmap[:, channel] |= ((index >> (3 * j + channel)) & 1) << (7 - j)
    return cmap.astype(np.uint8)
