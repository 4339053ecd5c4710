"""The outlines of the synthetic shapes, drawn with PIL into a supersampled patch.

:data:`OUTLINES` maps each name of :data:`~vision_tasks.data.classes.SHAPES` to its drawer; each takes
the supersampled center, the radius of the disc it must fit in, a rotation angle and the generator
for its own proportions. :func:`~vision_tasks.data.synthetic.drawing.shape_coverage` turns one into
anti-aliased coverage.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from PIL import ImageDraw

from ..classes import SHAPES

__all__ = ["OUTLINES", "rotate"]

Point = tuple[float, float]


def _draw_circle(draw: ImageDraw.ImageDraw, c: Point, r: float, angle: float, rng: np.random.Generator) -> None:
    _disc(draw, c, r, 255)


def _draw_square(draw: ImageDraw.ImageDraw, c: Point, r: float, angle: float, rng: np.random.Generator) -> None:
    draw.polygon(_star_points(c, [r] * 4, angle), fill=255)


def _draw_triangle(draw: ImageDraw.ImageDraw, c: Point, r: float, angle: float, rng: np.random.Generator) -> None:
    draw.polygon(_star_points(c, [r] * 3, angle), fill=255)


def _draw_hexagon(draw: ImageDraw.ImageDraw, c: Point, r: float, angle: float, rng: np.random.Generator) -> None:
    draw.polygon(_star_points(c, [r] * 6, angle), fill=255)


def _draw_star(draw: ImageDraw.ImageDraw, c: Point, r: float, angle: float, rng: np.random.Generator) -> None:
    inner = r * float(rng.uniform(0.38, 0.5))
    draw.polygon(_star_points(c, [r, inner] * 5, angle), fill=255)


def _draw_cross(draw: ImageDraw.ImageDraw, c: Point, r: float, angle: float, rng: np.random.Generator) -> None:
    w = r * float(rng.uniform(0.22, 0.32))  # half arm width
    a = math.sqrt(r * r - w * w)  # half arm length: the arm's corners touch the disc
    local = np.array(
        [(w, w), (a, w), (a, -w), (w, -w), (w, -a), (-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w), (-w, a), (w, a)]
    )
    draw.polygon(rotate(local, c, angle), fill=255)


def _draw_ring(draw: ImageDraw.ImageDraw, c: Point, r: float, angle: float, rng: np.random.Generator) -> None:
    _disc(draw, c, r, 255)
    _disc(draw, c, r * float(rng.uniform(0.45, 0.65)), 0)


def _draw_crescent(draw: ImageDraw.ImageDraw, c: Point, r: float, angle: float, rng: np.random.Generator) -> None:
    cut_radius, offset = r * float(rng.uniform(0.75, 0.9)), r * float(rng.uniform(0.35, 0.55))
    _disc(draw, c, r, 255)  # the cut disc reaches past the rim (offset + cut_radius > r): never a ring
    _disc(draw, (c[0] + offset * math.cos(angle), c[1] + offset * math.sin(angle)), cut_radius, 0)


OUTLINES: dict[str, Callable[[ImageDraw.ImageDraw, Point, float, float, np.random.Generator], None]] = {
    "circle": _draw_circle,
    "square": _draw_square,
    "triangle": _draw_triangle,
    "cross": _draw_cross,
    "ring": _draw_ring,
    "star": _draw_star,
    "hexagon": _draw_hexagon,
    "crescent": _draw_crescent,
}
assert tuple(OUTLINES) == SHAPES


def _disc(draw: ImageDraw.ImageDraw, c: Point, r: float, fill: int) -> None:
    draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fill)


def _star_points(c: Point, radii: Sequence[float], angle: float) -> list[Point]:
    """Vertices at evenly spaced angles with the given radii (regular polygon: all equal; star: alternating)."""
    t = angle + 2 * math.pi * np.arange(len(radii)) / len(radii)
    r = np.asarray(radii)
    return list(zip((c[0] + r * np.cos(t)).tolist(), (c[1] + r * np.sin(t)).tolist()))


def rotate(points: np.ndarray, c: Sequence[float], angle: float) -> list[Point]:
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return list(zip((c[0] + cos * x - sin * y).tolist(), (c[1] + sin * x + cos * y).tolist()))
