"""Drawing the synthetic images: shape primitives, whole pictures, one sample of each task.

Only the shape outline carries the class: size, position, rotation, fill (colour and texture),
background and distractors are random nuisances, so a model has to learn shape to score well, and a
broken pipeline (labels shuffled, wrong normalisation) shows up as chance accuracy.

The drawing is built from small primitives that the formats reuse:

- :func:`shape_coverage` / :func:`shape_mask`: a shape of a class inscribed in a box, rotated, as
  anti-aliased coverage in ``[0, 1]`` / a boolean mask over the whole canvas. Masks (and with
  :func:`mask_bbox` tight boxes) come for free; partial coverage marks the VOC "ignore" border.
  The outlines themselves are in :mod:`vision_tasks.data.synthetic.outlines`.
- :func:`random_background`, :func:`add_distractors`, :func:`contrasting_fill`, :func:`composite`:
  the canvas, clutter that is no shape of the list, a textured fill chosen to stand out from what
  lies under the shape, and alpha blending of the fill through the coverage.
- :func:`render_shapes`: the whole picture for a list of (class, box), with each shape's *visible*
  coverage after occlusion by later shapes.
- :func:`draw_classification_image`, :func:`draw_detection_image`, :func:`draw_segmentation_image`:
  one sample of each task, as the writers of :mod:`vision_tasks.data.synthetic` store them.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..classes import SHAPES
from ..common import IGNORE_INDEX
from .outlines import OUTLINES, rotate

__all__ = [
    "MAX_LAYOUT_ATTEMPTS",
    "MIN_CONTRAST",
    "MIN_LABEL_FRACTION",
    "MIN_VISIBLE_FRACTION",
    "add_distractors",
    "composite",
    "contrasting_fill",
    "draw_classification_image",
    "draw_detection_image",
    "draw_segmentation_image",
    "mask_bbox",
    "random_background",
    "random_box",
    "render_shapes",
    "shape_coverage",
    "shape_mask",
]

# Minimum colour distance (RGB, 0..255 per channel) between a fill colour and the 10th percentile of
# the background under and around its shape; 100 is clearly visible even on noisy backgrounds.
MIN_CONTRAST = 100.0

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
Size = tuple[int, int]  # height, width

# Detection layouts: a shape must keep this fraction of its coverage visible after occlusion, and a
# layout is redrawn at most this many times before the parameters are declared unsatisfiable.
MIN_VISIBLE_FRACTION = 0.6
MAX_LAYOUT_ATTEMPTS = 200

# Segmentation masks: a pixel takes a class when at least this fraction of it (anti-aliased coverage)
# is that class; mixed pixels, the ~1 px anti-aliased edge of every shape, get the VOC "ignore" value.
MIN_LABEL_FRACTION = 0.9


def shape_coverage(
    kind: str, box: Box, rng: np.random.Generator, *, canvas_size: Size, supersample: int = 4
) -> np.ndarray:
    """Anti-aliased coverage ``(H, W)`` float32 in ``[0, 1]`` of one ``kind`` shape inscribed in ``box``.

    The shape fits the disc inscribed in the box, whatever its random rotation (and its random
    proportions: ring hole, star depth, cross arm width, crescent cut), so the box bounds it. Parts
    outside the canvas are clipped. Drawn at ``supersample`` times the resolution and box-averaged
    down, so edge pixels hold the covered fraction.
    """
    if kind not in OUTLINES:
        raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")
    height, width = canvas_size
    x0, y0, x1, y1 = box
    px0, py0, px1, py1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
    k = supersample
    patch = Image.new("L", (max(px1 - px0, 1) * k, max(py1 - py0, 1) * k), 0)
    center = (((x0 + x1) / 2 - px0) * k, ((y0 + y1) / 2 - py0) * k)
    radius = min(x1 - x0, y1 - y0) / 2 * k
    OUTLINES[kind](ImageDraw.Draw(patch), center, radius, float(rng.uniform(0, 2 * math.pi)), rng)
    local = np.asarray(patch.reduce(k), dtype=np.float32) / 255.0
    coverage = np.zeros((height, width), dtype=np.float32)
    cx0, cy0, cx1, cy1 = max(px0, 0), max(py0, 0), min(px0 + local.shape[1], width), min(py0 + local.shape[0], height)
    if cx1 > cx0 and cy1 > cy0:
        coverage[cy0:cy1, cx0:cx1] = local[cy0 - py0 : cy1 - py0, cx0 - px0 : cx1 - px0]
    return coverage


def shape_mask(kind: str, box: Box, rng: np.random.Generator, *, canvas_size: Size) -> np.ndarray:
    """Boolean mask ``(H, W)`` of one ``kind`` shape inscribed in ``box``: pixels at least half covered."""
    return shape_coverage(kind, box, rng, canvas_size=canvas_size) >= 0.5


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the true pixels of ``mask``; None if empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def random_box(
    canvas_size: Size,
    rng: np.random.Generator,
    *,
    min_frac: float = 0.35,
    max_frac: float = 0.85,
    max_outside: float = 0.1,
) -> Box:
    """A square box with side ``min_frac..max_frac`` of the shorter canvas side, at a random place.

    The box may stick out of the canvas by up to ``max_outside`` of its side; since shapes are
    inscribed in the box's disc, the shape itself stays inside or nearly so.
    """
    height, width = canvas_size
    side = float(rng.uniform(min_frac, max_frac)) * min(height, width)
    slack = max_outside * side
    cx = float(rng.uniform(side / 2 - slack, width - side / 2 + slack))
    cy = float(rng.uniform(side / 2 - slack, height - side / 2 + slack))
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def random_background(canvas_size: Size, rng: np.random.Generator, *, clouds: bool = True) -> np.ndarray:
    """A float32 ``(H, W, 3)`` canvas in ``[0, 255]``: a solid colour, a linear gradient or (``clouds``) cloudy noise."""
    height, width = canvas_size
    base = rng.uniform(0, 255, size=3).astype(np.float32)
    style = int(rng.integers(3 if clouds else 2))
    if style == 0:  # solid, with a little sensor-like noise
        canvas = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
        sigma = float(rng.uniform(0, 4))
    elif style == 1:  # linear gradient between two colours
        other = rng.uniform(0, 255, size=3).astype(np.float32)
        t = _ramp(canvas_size, float(rng.uniform(0, 2 * math.pi)))
        canvas = base + t[..., None] * (other - base)
        sigma = float(rng.uniform(0, 6))
    else:  # low-frequency colour clouds: a coarse random grid upsampled bilinearly
        cells = int(rng.integers(2, 7))
        grid = np.clip(base + rng.normal(0, 50, size=(cells, cells, 3)), 0, 255).astype(np.uint8)
        canvas = np.asarray(Image.fromarray(grid).resize((width, height), Image.BILINEAR), dtype=np.float32)
        sigma = float(rng.uniform(3, 18))
    if sigma > 0:  # grey grain, as from a sensor
        canvas = canvas + sigma * rng.standard_normal((height, width, 1), dtype=np.float32)
    return np.clip(canvas, 0, 255)


def add_distractors(canvas: np.ndarray, rng: np.random.Generator, *, max_count: int = 3) -> None:
    """Draw, in place, on half of the canvases 1..``max_count`` lines or small elongated blobs.

    They are clutter that is none of :data:`SHAPES`: thin lines, and ellipses at most a fifth of the
    canvas long and clearly not round, far smaller than the smallest shape.
    """
    if max_count < 1 or rng.random() < 0.5:
        return
    height, width = canvas.shape[:2]
    side, k = min(height, width), 2
    for _ in range(int(rng.integers(1, max_count + 1))):
        layer = Image.new("L", (width * k, height * k), 0)
        draw = ImageDraw.Draw(layer)
        if rng.random() < 0.5:
            ends = rng.uniform(0, 1, size=4) * (width * k, height * k, width * k, height * k)
            line_width = int(rng.integers(1, max(2, side // 24) + 1)) * k
            draw.line([tuple(ends[:2]), tuple(ends[2:])], fill=255, width=line_width)
        else:
            a = float(rng.uniform(0.03, 0.1)) * side * k
            b = a * float(rng.uniform(0.25, 0.6))
            center = rng.uniform(0, 1, size=2) * (width * k, height * k)
            t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
            outline = np.stack([a * np.cos(t), b * np.sin(t)], 1)
            draw.polygon(rotate(outline, center, float(rng.uniform(0, math.pi))), fill=255)
        coverage = np.asarray(layer.reduce(k), dtype=np.float32) / 255.0
        composite(canvas, coverage, rng.uniform(0, 255, size=3).astype(np.float32))


def contrasting_fill(canvas: np.ndarray, box: Box, rng: np.random.Generator, *, textured: bool = True) -> np.ndarray:
    """A float32 ``(H, W, 3)`` fill that stands out from ``canvas`` around ``box``.

    The texture is solid, stripes, checker or noise (random period and angle). Its colours are the
    first of a few random candidates whose every tone is at least :data:`MIN_CONTRAST` away from 90 %
    of the canvas pixels in the box, or the most contrasting candidate if none is.
    """
    height, width = canvas.shape[:2]
    style = int(rng.integers(4)) if textured else 0  # 0 solid, 1 stripes, 2 checker, 3 noise
    candidates = rng.uniform(0, 255, size=(16, 3)).astype(np.float32)
    seconds = np.clip(candidates + rng.uniform(-70, 70, size=(16, 3)), 0, 255).astype(np.float32)
    tones = np.stack([candidates, seconds], 1) if style in (1, 2) else candidates[:, None]
    color, second = _pick_contrasting(tones, _region_pixels(canvas, box))
    if style == 0:
        return np.broadcast_to(color, (height, width, 3)).astype(np.float32)
    if style == 3:
        grain = float(rng.uniform(8, 28)) * rng.standard_normal((height, width, 1), dtype=np.float32)
        return np.clip(color + grain, 0, 255)
    side = min(box[2] - box[0], box[3] - box[1])
    angle = float(rng.uniform(0, math.pi))
    u, v = _rotated_coords((height, width), angle)
    if style == 1:
        period = float(rng.uniform(3, max(4.0, side / 4)))
        pattern = (u / period) % 1.0 < 0.5
    else:
        cell = float(rng.uniform(2, max(3.0, side / 6)))
        pattern = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
    return np.where(pattern[..., None], color, second).astype(np.float32)


def composite(canvas: np.ndarray, coverage: np.ndarray, fill: np.ndarray) -> None:
    """Paint ``fill`` (``(H, W, 3)`` or one colour) through ``coverage`` ``(H, W)`` onto ``canvas``, in place."""
    canvas += coverage[..., None] * (fill - canvas)


def render_shapes(
    canvas_size: Size, kinds: Sequence[str], boxes: Sequence[Box], rng: np.random.Generator, *, clutter: bool = True
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw ``kinds[i]`` in ``boxes[i]``, later shapes on top, over a random background.

    With ``clutter`` the background may be cloudy noise, up to 3 distractor lines/blobs are drawn
    and fills may be textured (stripes, checker, noise); without it, backgrounds are solid or
    gradients and fills solid colours.

    Returns:
        The uint8 ``(H, W, 3)`` image and, per shape, its *visible* coverage ``(H, W)`` in ``[0, 1]``
        (what later shapes leave of it): threshold at 0.5 for masks and boxes, and treat
        ``0 < coverage < 1`` as the ambiguous border.
    """
    image, _, visible = _render_layers(canvas_size, kinds, boxes, rng, clutter=clutter)
    return image, visible


def _render_layers(
    canvas_size: Size, kinds: Sequence[str], boxes: Sequence[Box], rng: np.random.Generator, *, clutter: bool
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """:func:`render_shapes`, also returning each shape's full coverage (before occlusion): image, full, visible."""
    if len(kinds) != len(boxes):
        raise ValueError(f"got {len(kinds)} shapes but {len(boxes)} boxes")
    canvas = random_background(canvas_size, rng, clouds=clutter)
    add_distractors(canvas, rng, max_count=3 if clutter else 0)
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    for kind, box in zip(kinds, boxes):
        coverage = shape_coverage(kind, box, rng, canvas_size=canvas_size)
        composite(canvas, coverage, contrasting_fill(canvas, box, rng, textured=clutter))
        full.append(coverage)
        visible = [v * (1.0 - coverage) for v in visible] + [coverage]
    return np.rint(canvas).astype(np.uint8), full, visible


def draw_classification_image(
    kind: str, image_size: int, rng: np.random.Generator, *, clutter: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One classification sample: a ``kind`` shape on a square canvas; returns (uint8 image, coverage)."""
    size = (image_size, image_size)
    image, (coverage,) = render_shapes(size, [kind], [random_box(size, rng)], rng, clutter=clutter)
    return image, coverage


def draw_detection_image(
    image_size: int,
    rng: np.random.Generator,
    *,
    min_objects: int = 1,
    max_objects: int = 4,
    min_size: float = 0.15,
    max_size: float = 0.6,
    max_overlap: float = 0.3,
    clutter: bool = False,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One detection sample: ``min_objects..max_objects`` random shapes on a square canvas.

    Each shape is inscribed in a square box of side ``min_size..max_size`` of the canvas (see
    :func:`random_box`). A layout is redrawn while two boxes overlap with IoU > ``max_overlap`` or
    a shape keeps less than :data:`MIN_VISIBLE_FRACTION` of its coverage visible under the shapes
    drawn after it, so every object is recognisable.

    Returns:
        The uint8 ``(H, W, 3)`` image and, per shape, ``(label, mask)``: its index in
        :data:`SHAPES` and the boolean ``(H, W)`` mask of its visible coverage > 0.5.

    Raises:
        ValueError: no layout satisfied the constraints in :data:`MAX_LAYOUT_ATTEMPTS` tries (too
            many or too large objects for ``max_overlap``).
    """
    image, labels, visible = _draw_layout(
        image_size, rng, min_objects=min_objects, max_objects=max_objects, min_size=min_size, max_size=max_size,
        max_overlap=max_overlap, clutter=clutter,
    )
    return image, [(label, v > 0.5) for label, v in zip(labels, visible)]


def draw_segmentation_image(
    image_size: int,
    rng: np.random.Generator,
    *,
    min_objects: int = 1,
    max_objects: int = 3,
    min_size: float = 0.25,
    max_size: float = 0.6,
    max_overlap: float = 0.3,
    clutter: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One segmentation sample: the layout of :func:`draw_detection_image` and its class mask.

    The mask is uint8 ``(H, W)``: 0 background, ``label + 1`` for the shape ``SHAPES[label]``, and
    :data:`IGNORE_INDEX` (255, VOC's "void" border) on mixed pixels. A pixel takes a class
    (background or a shape class; overlapping shapes of one class add up) when at least
    :data:`MIN_LABEL_FRACTION` of it is that class in the anti-aliased visible coverage; the
    anti-aliased edge between, about one pixel wide, is ignored. (VOC's own border is ~5 px wide,
    drawn by hand; here the exact coverage is known, so only the truly mixed pixels are ambiguous.)
    """
    image, labels, visible = _draw_layout(
        image_size, rng, min_objects=min_objects, max_objects=max_objects, min_size=min_size, max_size=max_size,
        max_overlap=max_overlap, clutter=clutter,
    )
    return image, _class_mask(labels, visible, (image_size, image_size))


def _class_mask(labels: Sequence[int], visible: Sequence[np.ndarray], canvas_size: Size) -> np.ndarray:
    """The uint8 class mask ``(H, W)`` of shapes ``labels`` with visible coverages ``visible``.

    Class ``label + 1`` (0 for the background) where that class holds at least
    :data:`MIN_LABEL_FRACTION` of the pixel, :data:`IGNORE_INDEX` elsewhere. Visible
    coverages are alpha-compositing weights (they sum to at most 1 per pixel), so the background
    holds the rest.
    """
    present = sorted(set(int(label) for label in labels))
    fractions = np.zeros((len(present) + 1, *canvas_size), dtype=np.float32)  # row 0: background
    for label, coverage in zip(labels, visible):
        fractions[1 + present.index(int(label))] += coverage
    fractions[0] = np.clip(1.0 - fractions[1:].sum(0), 0.0, 1.0)
    classes = np.array([0] + [label + 1 for label in present], dtype=np.uint8)
    mask = classes[np.argmax(fractions, axis=0)]
    mask[fractions.max(axis=0) < MIN_LABEL_FRACTION - 1e-6] = IGNORE_INDEX  # float32 sums of 1/16ths
    return mask


def _draw_layout(
    image_size: int,
    rng: np.random.Generator,
    *,
    min_objects: int,
    max_objects: int,
    min_size: float,
    max_size: float,
    max_overlap: float,
    clutter: bool,
) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
    """The layout of :func:`draw_detection_image`: image, shape labels and each shape's visible coverage."""
    size = (image_size, image_size)
    count = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        labels = [int(i) for i in rng.integers(len(SHAPES), size=count)]
        boxes = [random_box(size, rng, min_frac=min_size, max_frac=max_size) for _ in range(count)]
        if any(_box_iou(a, b) > max_overlap for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            continue
        image, full, visible = _render_layers(size, [SHAPES[i] for i in labels], boxes, rng, clutter=clutter)
        if all((v > 0.5).any() and v.sum() >= MIN_VISIBLE_FRACTION * f.sum() for v, f in zip(visible, full)):
            return image, labels, visible
    raise ValueError(
        f"could not lay out {count} shapes of {min_size}-{max_size} of a {image_size}px image with box IoU <= "
        f"{max_overlap} and {MIN_VISIBLE_FRACTION:.0%} of each visible in {MAX_LAYOUT_ATTEMPTS} tries; lower "
        "max_objects or max_size, or raise max_overlap"
    )


def _box_iou(a: Box, b: Box) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _ramp(canvas_size: Size, angle: float) -> np.ndarray:
    """``(H, W)`` values going linearly from 0 to 1 across the canvas along direction ``angle``."""
    u, _ = _rotated_coords(canvas_size, angle)
    return (u - u.min()) / max(float(u.max() - u.min()), 1e-6)


def _rotated_coords(canvas_size: Size, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(u, v)``, each ``(H, W)``, in axes rotated by ``angle``."""
    y, x = _pixel_grid(*canvas_size)
    cos, sin = math.cos(angle), math.sin(angle)
    return x * cos + y * sin, -x * sin + y * cos


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y.flags.writeable = x.flags.writeable = False  # shared between calls
    return y, x


def _region_pixels(canvas: np.ndarray, box: Box, max_pixels: int = 128) -> np.ndarray:
    """About ``max_pixels`` canvas pixels ``(N, 3)`` inside ``box`` (clipped), evenly strided."""
    height, width = canvas.shape[:2]
    x0, y0 = min(max(int(box[0]), 0), width - 1), min(max(int(box[1]), 0), height - 1)
    x1, y1 = max(min(math.ceil(box[2]), width), x0 + 1), max(min(math.ceil(box[3]), height), y0 + 1)
    pixels = canvas[y0:y1, x0:x1].reshape(-1, 3)
    return pixels[:: max(1, len(pixels) // max_pixels)]


def _pick_contrasting(tones: np.ndarray, background: np.ndarray, chunk: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Among candidate tone sets ``(K, T, 3)``, the first whose worst tone clears :data:`MIN_CONTRAST`.

    A tone clears it if 90 % of the ``background`` pixels ``(N, 3)`` are at least that far away.
    Candidates are scored a few at a time (the first few usually include one); if none clears the
    bar, the best-scoring one is returned.
    """
    tenth = len(background) // 10
    best, best_score = 0, -1.0
    for start in range(0, len(tones), chunk):
        squared = np.square(tones[start : start + chunk, :, None, :] - background[None, None]).sum(-1)  # (k, T, N)
        score = np.partition(squared, tenth, axis=-1)[..., tenth].min(axis=1)
        good = np.flatnonzero(score >= MIN_CONTRAST**2)
        if good.size:
            best = start + int(good[0])
            break
        if score.max() > best_score:
            best, best_score = start + int(np.argmax(score)), float(score.max())
    return tones[best, 0], tones[best, -1]


# --------------------------------------------------------------------------------------------------
# Writing datasets
