"""The synthetic segmentation set, written in Pascal VOC 2012 layout (palette PNG class masks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from ..classes import SHAPES, voc_colormap
from ..common import IGNORE_INDEX
from .cache import SPLIT_KEYS, generate_atomically, sample_rng, scene_params
from .drawing import draw_segmentation_image

__all__ = ["generate_segmentation"]


def generate_segmentation(
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
    """Write the synthetic shape segmentation set in Pascal VOC 2012 layout under ``root``; return ``root``.

    Each image holds ``min_objects..max_objects`` shapes laid out as in
    :func:`~vision_tasks.data.synthetic.drawing.draw_detection_image` (``min_objects=0`` allows images of
    background only). Its mask (see :func:`draw_segmentation_image`) has class 0 for the background,
    ``label + 1`` for the shape ``SHAPES[label]`` and 255 ("ignore", VOC's void border) on the ~1 px
    anti-aliased edge of every shape: pixels of which no class (background included) holds
    :data:`~vision_tasks.data.synthetic.drawing.MIN_LABEL_FRACTION`. The class names are
    ``["background", *SHAPES]``. ``clutter`` as in
    :func:`~vision_tasks.data.synthetic.classification.generate_classification`.

    Layout (what :func:`~vision_tasks.data.formats.voc_segmentation.read_voc_segmentation` reads)::

        root/VOC2012/JPEGImages/<id>.png            RGB (PNG: lossless; the reader takes any image type)
        root/VOC2012/SegmentationClass/<id>.png     palette PNG (mode "P", VOC colour map) of class indices
        root/VOC2012/ImageSets/Segmentation/{train,val}.txt
        root/synthetic.json

    Ids are ``000001``, ``000002``, ... through the train images, then the val images (the splits share
    the folders, as in VOC). Deterministic in ``seed``; an image does not depend on how many are
    generated. Returns at once if ``root`` already holds this very dataset.

    Raises:
        DataError: ``root`` exists with another synthetic dataset, or holds files the generator did
            not write; nothing is overwritten.
        ValueError: a parameter out of range, or a layout the constraints cannot satisfy.
    """
    params, counts, layout = scene_params(
        num_train=num_train, num_val=num_val, image_size=image_size, min_objects=min_objects,
        max_objects=max_objects, min_size=min_size, max_size=max_size, max_overlap=max_overlap, seed=seed,
        clutter=clutter,
    )

    def write(tmp: Path) -> dict[str, Any]:
        palette = voc_colormap(256).tobytes()
        base = tmp / "VOC2012"
        image_dir, mask_dir = base / "JPEGImages", base / "SegmentationClass"
        list_dir = base / "ImageSets" / "Segmentation"
        for folder in (image_dir, mask_dir, list_dir):
            folder.mkdir(parents=True)
        next_id = 1
        for split, count in counts.items():
            ids = []
            for index in range(count):
                rng = sample_rng(params["seed"], SPLIT_KEYS[split], index)
                image, mask = draw_segmentation_image(params["image_size"], rng, **layout)
                name = f"{next_id:06d}"
                next_id += 1
                Image.fromarray(image).save(image_dir / f"{name}.png", format="PNG", compress_level=1)
                label_image = Image.fromarray(mask)  # mode "L"; putpalette makes it "P"
                label_image.putpalette(palette)
                label_image.save(mask_dir / f"{name}.png", format="PNG", optimize=False)
                ids.append(name)
            (list_dir / f"{split}.txt").write_text("".join(f"{name}\n" for name in ids))
        return {"classes": ["background", *SHAPES], "counts": counts, "ignore_index": IGNORE_INDEX}

    return generate_atomically(root, "segmentation", params, write)
