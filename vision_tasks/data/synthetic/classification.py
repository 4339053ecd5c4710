"""The synthetic classification set, written in ImageFolder layout: ``root/{train,val}/<shape>/*.png``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from ..classes import SHAPES
from .cache import SPLIT_KEYS, check_int, generate_atomically, sample_rng
from .drawing import draw_classification_image

__all__ = ["generate_classification"]


def generate_classification(
    root: str | os.PathLike[str],
    *,
    num_train_per_class: int = 300,
    num_val_per_class: int = 50,
    image_size: int = 64,
    seed: int = 0,
    clutter: bool = False,
) -> Path:
    """Write the synthetic shape classification set in ImageFolder layout under ``root``; return ``root``.

    ``clutter=False`` (default): solid or gradient backgrounds and solid fills of random colours;
    the classes are learnt from scratch by MobileNetV2 in minutes on a CPU. ``clutter=True``
    adds cloudy backgrounds, distractors and textured fills: a harder set that needs far longer.

    Layout: ``root/{train,val}/<shape>/<index:05d>.png`` (RGB), one folder per name of
    :data:`SHAPES`, plus ``root/synthetic.json``. Deterministic in ``seed``. Returns at once if
    ``root`` already holds this very dataset (same manifest parameters).

    Raises:
        DataError: ``root`` exists with another synthetic dataset, or holds files the generator did
            not write; nothing is overwritten.
        ValueError: a parameter out of range.
    """
    params = dict(
        num_train_per_class=num_train_per_class, num_val_per_class=num_val_per_class, image_size=image_size, seed=seed,
        clutter=bool(clutter),
    )
    check_int(params, "num_train_per_class", 1)
    check_int(params, "num_val_per_class", 1)
    check_int(params, "image_size", 16)
    check_int(params, "seed", 0)
    counts = {"train": params["num_train_per_class"], "val": params["num_val_per_class"]}

    def write(tmp: Path) -> dict[str, Any]:
        for split, per_class in counts.items():
            for label, kind in enumerate(SHAPES):
                folder = tmp / split / kind
                folder.mkdir(parents=True)
                for index in range(per_class):
                    rng = sample_rng(params["seed"], SPLIT_KEYS[split], label, index)
                    image, _ = draw_classification_image(kind, params["image_size"], rng, clutter=params["clutter"])
                    Image.fromarray(image).save(folder / f"{index:05d}.png", format="PNG", compress_level=1)
        return {"classes": list(SHAPES), "counts": {split: n * len(SHAPES) for split, n in counts.items()}}

    return generate_atomically(root, "classification", params, write)
