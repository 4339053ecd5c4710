"""The synthetic datasets on disk: where they go, their manifest, atomic generation, the shared checks.

A dataset is generated into a temporary sibling folder and renamed into place, with a
``synthetic.json`` manifest (:data:`MANIFEST_NAME`); an existing folder is reused only when its
manifest has the same parameters, and a folder the generator did not write is never touched
(:func:`generate_atomically`). :func:`synthetic_root` names the cache folder of a parameter set. Each
image draws from its own generator (:func:`sample_rng`), seeded by ``(seed, split, class, index)``,
so an image does not depend on how many others are generated or in which order.

This module imports no generator: :func:`synthetic_root` resolves the one of a task by name, on use.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import inspect
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common import default_data_dir
from ..errors import DataError

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "SPLIT_KEYS",
    "check_float",
    "check_int",
    "generate_atomically",
    "sample_rng",
    "scene_params",
    "synthetic_root",
]

# Bump whenever the drawing changes the pixels: folders of another version are then not reused,
# and synthetic_root() gives a fresh folder name.
GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic.json"

# The manifest's "generator": this package (the name it had when it was one module, so that the
# manifests, and the folders they describe, stay the same).
GENERATOR_NAME = __package__

SPLIT_KEYS = {"train": 0, "val": 1}  # part of every image's seed, so the splits never share an image

# The generator of each task, as "module:function" in this package: imported when first needed, since
# the generators import this module.
_GENERATORS: dict[str, str] = {
    "classification": "classification:generate_classification",
    "detection": "detection:generate_detection",
    "segmentation": "segmentation:generate_segmentation",
    "multitask": "multitask:generate_multitask",
}


# --------------------------------------------------------------------------------------------------
# Where the data lives


def synthetic_root(task: str, **params: Any) -> Path:
    """The folder under :func:`default_data_dir` for the ``task`` dataset generated with ``params``.

    The name is ``<task>-<8 hex digits>``, a hash of the task, the generator version and the full
    parameters (the generator's defaults filled in), so that ``synthetic_root("classification")``
    and ``synthetic_root("classification", seed=0)`` agree and different parameters never collide.

    Raises:
        ValueError: ``task`` has no generator.
        TypeError: a parameter the generator does not take.
    """
    return default_data_dir() / f"{task}-{_params_digest(task, _full_params(task, params))}"


def _full_params(task: str, params: dict[str, Any]) -> dict[str, Any]:
    defaults = {
        name: p.default
        for name, p in inspect.signature(_generator(task)).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TypeError(f"synthetic {task!r} data takes no parameter(s) {unknown}; it takes {sorted(defaults)}")
    return {**defaults, **params}


def _params_digest(task: str, params: dict[str, Any]) -> str:
    text = json.dumps({"task": task, "version": GENERATOR_VERSION, "params": params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _generator(task: str) -> Callable[..., Path]:
    """The ``generate_<task>`` function, imported on first use."""
    if task not in _GENERATORS:
        raise ValueError(f"no synthetic generator for task {task!r}; known: {sorted(_GENERATORS)}")
    module, name = _GENERATORS[task].split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


# --------------------------------------------------------------------------------------------------
# Parameters, seeds and atomic generation


def scene_params(**given: Any) -> tuple[dict[str, Any], dict[str, int], dict[str, Any]]:
    """Check the parameters shared by the multi-shape generators (detection, segmentation).

    Returns the normalised parameters (the manifest's), the image count per split and the layout
    arguments of :func:`~vision_tasks.data.synthetic.drawing.draw_detection_image` /
    :func:`~vision_tasks.data.synthetic.drawing.draw_segmentation_image`.
    """
    params = {**given, "clutter": bool(given["clutter"])}
    check_int(params, "num_train", 1)
    check_int(params, "num_val", 1)
    check_int(params, "image_size", 16)
    check_int(params, "min_objects", 0)
    check_int(params, "max_objects", max(1, params["min_objects"]))
    check_float(params, "min_size", 0.0, 1.0)
    check_float(params, "max_size", params["min_size"], 1.0)
    check_float(params, "max_overlap", 0.0, 1.0)
    check_int(params, "seed", 0)
    if params["min_size"] * params["image_size"] < 4:
        raise ValueError(
            f"min_size * image_size must be at least 4 pixels, got {params['min_size']} * {params['image_size']}"
        )
    counts = {"train": params["num_train"], "val": params["num_val"]}
    layout = {k: params[k] for k in ("min_objects", "max_objects", "min_size", "max_size", "max_overlap", "clutter")}
    return params, counts, layout


def check_float(params: dict[str, Any], name: str, low: float, high: float) -> None:
    value = params[name]
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    params[name] = float(value)


def check_int(params: dict[str, Any], name: str, minimum: int) -> None:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    params[name] = int(value)


def sample_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator of one sample: a child of ``seed`` keyed by (split, class, index), order-independent."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def generate_atomically(
    root: str | os.PathLike[str], task: str, params: dict[str, Any], write: Callable[[Path], dict[str, Any]]
) -> Path:
    """Run ``write(tmp)`` in a fresh sibling of ``root``, add the manifest, and rename it to ``root``.

    ``write`` returns extra manifest entries (classes, counts). Concurrent callers (e.g. one per
    node) each write their own temporary folder; the first rename wins and the others check the
    winner's manifest and drop their copy.
    """
    root = Path(root).expanduser()
    if _existing_matches(root, task, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = {
            "generator": GENERATOR_NAME,
            "version": GENERATOR_VERSION,
            "task": task,
            "params": params,
            **write(tmp),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, root)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not _existing_matches(root, task, params):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process published the same data first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _existing_matches(root: Path, task: str, params: dict[str, Any]) -> bool:
    """True if ``root`` holds this dataset, False if it is absent or empty; otherwise raise DataError."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise DataError(f"cannot write synthetic data to {root}: it exists and is not a folder")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        if any(root.iterdir()):
            raise DataError(
                f"refusing to write synthetic data into {root}: the folder is not empty and has no "
                f"{MANIFEST_NAME}, so it was not written by the generator; choose another folder"
            )
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        found = {"task": manifest["task"], "version": manifest["version"], "params": manifest["params"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the synthetic data manifest {manifest_path}: {exc}") from exc
    wanted = {"task": task, "version": GENERATOR_VERSION, "params": params}
    if found != wanted:
        raise DataError(
            f"{root} holds synthetic data generated with {found}, not the requested {wanted}; "
            "delete the folder or choose another root (synthetic_root() gives one per parameter set)"
        )
    return True
