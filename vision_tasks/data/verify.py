"""Every image of a dataset checked once, before training, and remembered.

A 0-byte, truncated or corrupt image otherwise surfaces when its batch is drawn, minutes or hours into
a run. :func:`verify_images` decodes each image before training starts, as cheaply as the format allows:

- JPEG: the whole entropy-coded stream is decoded at 1/8 of the resolution (PIL's ``draft``, libjpeg's DCT
  scaling), which finds truncation and corrupt data at a fraction of a full decode's cost and memory;
- PNG: every chunk is read and its CRC checked (``Image.verify``), without inflating the pixels;
- other formats: a full decode.

The result of each file is cached by its path, size and modification time under
:func:`~vision_tasks.data.common.default_data_dir` (``image_checks/``), so a second run over the same files
reads a small JSON file instead of the images. Processes that verify the same files at once (the ranks of a
DDP run on one machine) take turns through a file lock: the first checks, the others find its results.

With ``bad_images="stop"`` (the default) a bad image raises :class:`DataError` listing the first ones;
with ``"skip"`` they are left out of the dataset with a warning that lists them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from filelock import FileLock
from PIL import Image

from ..files import atomic_write
from .common import MAX_LISTED, UNREADABLE, bomb_message, default_data_dir
from .errors import DataError

__all__ = ["BAD_IMAGES", "ImageCheck", "verify_images"]

log = logging.getLogger(__name__)

BAD_IMAGES = ("stop", "skip")  # what to do with images that cannot be used: data.bad_images
CACHE_DIR = "image_checks"
_CACHE_VERSION = 1
_PROGRESS_ABOVE = 2000  # a progress bar for more unchecked images than this

# (width, height, problem or None) of one file; the cache keeps [size, mtime_ns, width, height, problem]
ImageCheck = tuple[int, int, str | None]


def _check_file(path: str) -> ImageCheck:
    """``(width, height, problem)``: decode ``path`` as cheaply as its format allows (see the module docstring)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.format == "PNG":
                img.verify()  # every chunk's CRC, without inflating the pixels
            else:
                if img.format == "JPEG":  # all of the stream, at 1/8 of the pixels
                    img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
                img.load()
    except Image.DecompressionBombError as exc:
        return 0, 0, bomb_message(path, exc)
    except UNREADABLE as exc:
        return 0, 0, f"{path}: {exc or type(exc).__name__}"
    if width < 1 or height < 1:
        return width, height, f"{path}: empty image ({width}x{height})"
    return width, height, None


def _stat_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _cache_file(paths: Sequence[str]) -> Path:
    """One cache file per folder the images share (a dataset, or one of its splits)."""
    common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    digest = hashlib.sha1(common.encode()).hexdigest()[:16]
    return default_data_dir() / CACHE_DIR / f"{digest}.json"


def _read_cache(file: Path) -> dict[str, list]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("files", {}) if data.get("version") == _CACHE_VERSION else {}


def verify_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    bad_images: str = "stop",
    expected_sizes: Sequence[tuple[int, int]] | None = None,
    what: str = "images",
    cache: bool = True,
) -> list[bool]:
    """Check that every image of ``paths`` decodes (and has its ``expected_sizes``); say which cannot be used.

    Args:
        paths: the image files.
        bad_images: ``"stop"``: raise :class:`DataError` listing the bad images; ``"skip"``: warn, listing them,
            and report them as not usable.
        expected_sizes: ``(height, width)`` of each image, as its annotation says (detection); an image of
            another size is bad (its boxes would not fit it).
        what: how the images are named in messages (``"training images of data.root=..."``).
        cache: remember each file's result by path, size and modification time (see the module docstring).

    Returns:
        For each path, whether it can be used (all True unless ``bad_images="skip"``).
    """
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"data.bad_images must be one of {BAD_IMAGES}, got {bad_images!r}")
    names = [os.path.abspath(os.fspath(p)) for p in paths]
    if not names:
        return []
    results: dict[str, ImageCheck] = {}
    if cache:
        file = _cache_file(names)
        file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(file) + ".lock"):  # the ranks of a DDP run take turns: the first checks, the others read
            cached = _read_cache(file)
            todo = []
            for name in set(names):
                key, entry = _stat_key(name), cached.get(name)
                if key is not None and entry is not None and entry[:2] == key:
                    results[name] = tuple(entry[2:])  # type: ignore[assignment]
                else:
                    todo.append(name)
            if todo:
                fresh = _check_all(sorted(todo), what)
                results.update(fresh)
                for name, check in fresh.items():
                    key = _stat_key(name)
                    if key is not None:
                        cached[name] = [*key, *check]
                atomic_write(file, json.dumps({"version": _CACHE_VERSION, "files": cached}))
    else:
        results = _check_all(sorted(set(names)), what)

    problems: list[str] = []
    usable = []
    for index, name in enumerate(names):
        width, height, problem = results[name]
        if problem is None and expected_sizes is not None:
            want_h, want_w = expected_sizes[index]
            if (height, width) != (want_h, want_w):
                problem = f"{name}: the image is {width}x{height} but its annotation says {want_w}x{want_h}"
        usable.append(problem is None)
        if problem is not None:
            problems.append(problem)
    if problems:
        listed = "\n  ".join(problems[:2 * MAX_LISTED])
        more = len(problems) - 2 * MAX_LISTED
        listed += f"\n  ... and {more} more" if more > 0 else ""
        if bad_images == "stop":
            raise DataError(
                f"{len(problems)} of the {len(names)} {what} cannot be used:\n  {listed}\n"
                "Replace or remove them, or leave them out of training with data.bad_images=skip."
            )
        warnings.warn(f"left out {len(problems)} of the {len(names)} {what} (data.bad_images=skip):\n  {listed}",
                      stacklevel=2)
    return usable


def _check_all(names: list[str], what: str) -> dict[str, ImageCheck]:
    """Check ``names`` in threads (PIL decodes without the GIL), with a progress bar when there are many."""
    start = time.perf_counter()
    workers = min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(_check_file, names)
        if len(names) > _PROGRESS_ABOVE:
            from tqdm import tqdm

            jobs = tqdm(jobs, total=len(names), desc=f"checking {what}", unit="img")
        checks = list(jobs)
    log.info("checked %d %s in %.1f s (cached for the next run)", len(names), what, time.perf_counter() - start)
    return dict(zip(names, checks))
