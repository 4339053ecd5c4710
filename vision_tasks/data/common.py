"""What every reader of this package shares: image files, listings, threaded file checks, the data folder.

- :data:`IMAGE_EXTENSIONS`, :func:`list_images` (a folder, recursively) and :func:`files_by_stem`
  (one folder, by file stem): which files are images.
- :func:`load_rgb` (pixels) and :func:`read_header` / :func:`image_size` / :func:`image_sizes` (the
  header only, no pixels decoded); :data:`UNREADABLE` is what PIL raises for a file it cannot read.
- :func:`check_each`: the one threaded checker behind every up-front file check (ImageFolder image
  headers, image/mask header pairs, mask values); :func:`listing` and :data:`MAX_LISTED`: how a
  long list of bad files is quoted in an error.
- :data:`IGNORE_INDEX`: the mask value that no loss or metric counts.
- :func:`default_data_dir` (``$VISION_TASKS_DATA``): where generated data and caches go;
  :func:`vision_tasks.files.atomic_write` writes there without readers ever seeing half a file.
"""

from __future__ import annotations

import errno
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
from PIL import Image

from .errors import DataError

__all__ = [
    "DATA_DIR_ENV",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "MAX_LISTED",
    "Transform",
    "UNREADABLE",
    "bomb_message",
    "check_data_root",
    "check_each",
    "default_data_dir",
    "files_by_stem",
    "image_size",
    "image_sizes",
    "list_images",
    "listing",
    "load_rgb",
    "read_header",
    "reduced_size",
    "REDUCE_ABOVE",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# The mask value that padding writes and the losses and metrics skip (Pascal VOC's "void").
IGNORE_INDEX = 255  # mask value of pixels no loss or metric counts (VOC's "void" border, padding)

MAX_LISTED = 5  # file names quoted in an error before "... and N more"

# What PIL raises for a file it cannot read (missing, truncated, not an image, a decompression bomb).
UNREADABLE: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

DATA_DIR_ENV = "VISION_TASKS_DATA"

# PIL refuses images above 2 x Image.MAX_IMAGE_PIXELS (about 179M pixels) as possible decompression bombs;
# whoever has genuine images that large raises the limit here (the images are decoded reduced: load_rgb).
MAX_PIXELS_ENV = "VISION_TASKS_MAX_IMAGE_PIXELS"
if os.environ.get(MAX_PIXELS_ENV):
    try:
        Image.MAX_IMAGE_PIXELS = int(os.environ[MAX_PIXELS_ENV]) // 2
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}: expected a number of pixels") from None

# An albumentations pipeline as the datasets call it: keyword arrays in, a dict of results out.
Transform = Callable[..., dict[str, Any]]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Images


def load_rgb(path: str | os.PathLike[str], *, max_side: int | None = None) -> np.ndarray:
    """Read an image file as uint8 ``(H, W, 3)`` RGB; grayscale, palette, 16-bit and alpha images are converted.

    The alpha channel is dropped (as torchvision's ImageFolder loader does). With ``max_side``, an image
    whose longer side exceeds it comes reduced to :func:`reduced_size` (a JPEG is decoded reduced, at 1/2,
    1/4 or 1/8 of its pixels through libjpeg's DCT scaling, so a 12000x12000 photo never occupies 432 MB;
    other formats are decoded, then resized). Raises :class:`DataError` naming the file if it cannot be
    decoded, or is larger than the decompression-bomb limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # big images are expected: see max_side
            with Image.open(path) as img:
                target = reduced_size(img.height, img.width, max_side)
                if target == (img.height, img.width):
                    return np.array(_to_rgb(img))  # a writable copy: transforms may work in place
                if img.format == "JPEG":
                    img.draft("RGB", (target[1], target[0]))  # the smallest DCT scale that is at least the target
                return np.array(_to_rgb(img).resize((target[1], target[0]), Image.BILINEAR))
    except Image.DecompressionBombError as exc:
        raise DataError(bomb_message(path, exc)) from exc
    except UNREADABLE as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def bomb_message(path: str | os.PathLike[str], exc: BaseException) -> str:
    """What to say of an image PIL refuses as a possible decompression bomb (``Image.DecompressionBombError``)."""
    return (
        f"{path}: {exc} PIL refuses images above Image.MAX_IMAGE_PIXELS x 2 = {2 * (Image.MAX_IMAGE_PIXELS or 0):,} "
        "pixels, because a small file that decodes to that many pixels can exhaust memory. If the image is "
        "genuine, downscale it (e.g. `convert big.jpg -resize 8000x8000 big.jpg`), or raise the limit with the "
        "environment variable VISION_TASKS_MAX_IMAGE_PIXELS=<pixels>."
    )


def reduced_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(height, width)`` scaled so that the longer side is ``max_side``, if it is longer; else unchanged."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


# Images whose longer side exceeds this many times the size the pipeline works at are decoded reduced to
# it (load_rgb's max_side), with their boxes and masks scaled alike: the pipelines end at a fixed size, so
# beyond this a larger image adds memory (a 12000x12000 photo is 432 MB as RGB) but no detail the model sees.
REDUCE_ABOVE = 4


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when such a palette image goes straight to RGB
    elif img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale: scale, don't clip
        values = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(values * (255.0 / peak), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def read_header(path: str | os.PathLike[str]) -> tuple[int, int, str]:
    """``(width, height, mode)`` from the image header (no pixels decoded); raises one of :data:`UNREADABLE`."""
    with Image.open(path) as img:
        return img.width, img.height, img.mode


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) from the image header."""
    try:
        width, height, _ = read_header(path)
    except UNREADABLE as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return height, width


def image_sizes(
    paths: Sequence[Path], headline: str = "{count} of {total} images cannot be read"
) -> list[tuple[int, int]]:
    """(height, width) of each of ``paths`` from its header, read in threads (:func:`check_each`).

    Raises:
        DataError: ``headline`` (formatted with ``count`` and ``total``), then the first unreadable or
            empty images, each with the reason.
    """
    sizes: dict[int, tuple[int, int]] = {}

    def problem(index: int) -> str | None:
        try:
            width, height, _ = read_header(paths[index])
        except UNREADABLE as exc:
            return f"{paths[index]}: {exc}"
        if width < 1 or height < 1:
            return f"{paths[index]}: empty image ({width}x{height})"
        sizes[index] = (height, width)
        return None

    check_each(range(len(paths)), problem, headline)
    return [sizes[index] for index in range(len(paths))]


# --------------------------------------------------------------------------------------------------
# Listing files


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (recursively, following links, sorted) and the other files."""
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(Path(dirpath) / name)
    return sorted(images), others


def files_by_stem(
    folder: Path, extensions: Sequence[str], *, prefer: str | None = None, ambiguous: str = "prefer"
) -> dict[str, str]:
    """``stem -> file name`` of the non-hidden files of ``folder`` ending in ``extensions`` (any case).

    With several files of one stem, ``prefer`` (an extension) wins, else the first in ``extensions``
    order; ``ambiguous="error"`` raises :class:`DataError` listing them instead.
    """
    found: dict[str, list[str]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            suffix = os.path.splitext(name)[1].lower()
            if name.startswith(".") or suffix not in extensions:
                continue
            found.setdefault(name[: -len(suffix)], []).append(name)
    order = [prefer] if prefer else []
    order += [ext for ext in extensions if ext != prefer]
    clashes = {stem: names for stem, names in found.items() if len(names) > 1}
    if clashes and ambiguous == "error":
        listed = [" / ".join(sorted(names)) for _, names in sorted(clashes.items())]
        raise DataError(
            f"{folder}: {len(clashes)} name(s) with several image files, which is ambiguous: {listing(listed)}"
        )
    return {
        stem: min(names, key=lambda n: (order.index(os.path.splitext(n)[1].lower()), n))
        for stem, names in found.items()
    }


def listing(items: Sequence[str]) -> str:
    """The first :data:`MAX_LISTED` of ``items``, comma-separated, then ``... and N more``."""
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


# --------------------------------------------------------------------------------------------------
# Checking many files


def check_each(
    items: Sequence[T],
    problem: Callable[[T], str | None],
    headline: str,
    *,
    max_listed: int = MAX_LISTED,
    max_workers: int | None = None,
) -> None:
    """Run ``problem`` on every item in threads; raise :class:`DataError` listing the first problems found.

    Threads, because the cost is file-system latency (reading headers) or decoding in PIL, which
    releases the GIL; at most ``max_workers`` (default ``min(16, 4 x CPUs)``). Items are submitted in
    chunks, so the number of pending futures stays bounded even for ImageNet. ``problem(item)`` is
    None for a good item, else one line naming the file and the reason. The error's first line is
    ``headline`` formatted with ``count`` (bad items) and ``total`` (all items); the first
    ``max_listed`` problems follow, one per line, in the order of ``items``, then ``... and N more``.
    """
    workers = min(16, 4 * (os.cpu_count() or 1)) if max_workers is None else max_workers
    problems: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in _chunks(items, 4096):
            problems += [p for p in pool.map(problem, chunk) if p is not None]
    if problems:
        listed = "\n  ".join(problems[:max_listed])
        more = f"\n  ... and {len(problems) - max_listed} more" if len(problems) > max_listed else ""
        raise DataError(f"{headline.format(count=len(problems), total=len(items))}:\n  {listed}{more}")


def _chunks(items: Iterable[T], size: int) -> Iterable[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


# --------------------------------------------------------------------------------------------------
# Where the data lives


def default_data_dir() -> Path:
    """``$VISION_TASKS_DATA`` if set, else ``~/.cache/vision_tasks``: where generated datasets go."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vision_tasks"


def check_data_root(root: str | os.PathLike, key: str = "data.root") -> Path:
    """``root`` (``~`` expanded) when it is a folder this process can list; else :class:`DataError` saying why.

    ``Path.is_dir()`` answers False for a folder that does not exist, a symbolic link loop and a folder that
    cannot be read alike; users need to know which, and what to do about it.
    """
    path = Path(root).expanduser()
    try:
        os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{key}={root}: {path} does not exist; point {key} at the dataset's folder") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataError(
                f"{key}={root}: {path} is a loop of symbolic links (it leads back to itself; {err.strerror}); "
                f"point {key} at the dataset's folder itself, or fix the link (ls -l {path})") from None
        if isinstance(err, PermissionError):
            raise DataError(f"{key}={root}: {path} cannot be reached: permission denied on a folder above it; "
                            "give the user running this read and execute permission on the folders of the path") from None
        raise DataError(f"{key}={root}: {path} cannot be read ({err.strerror or err})") from None
    if not path.is_dir():
        raise DataError(f"{key}={root}: {path} is not a folder; point {key} at the dataset's folder")
    try:
        with os.scandir(path):
            pass
    except PermissionError:
        raise DataError(
            f"{key}={root}: the folder {path} cannot be read: permission denied; give the user running this read and "
            f"execute permission on it and its contents (chmod -R u+rX {path}), or copy the data somewhere readable"
        ) from None
    except OSError as err:
        raise DataError(f"{key}={root}: the folder {path} cannot be read ({err.strerror or err})") from None
    return path
