"""SVG chart geometry shared by the SMART page and the offline reports, drawn by their templates.

Plain numbers in SVG user units (y grows downwards): linear scales, axis ticks, polyline and step
paths, and stacked bars. No plotting library and nothing to load in the page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Scale:
    """Maps ``domain`` linearly onto ``range`` (for a y axis, ``range`` is (bottom, top))."""

    domain: tuple[float, float]
    range: tuple[float, float]
    clamp: bool = False  # values outside the domain land on its edge
    digits: int | None = 1  # None: unrounded (round when drawing)

    def __call__(self, value: float) -> float:
        (d0, d1), (r0, r1) = self.domain, self.range
        if self.clamp:
            value = min(max(value, min(d0, d1)), max(d0, d1))
        position = r0 + (r1 - r0) * (value - d0) / (d1 - d0)
        return position if self.digits is None else round(position, self.digits)

    def length(self, span: float) -> float:
        """How far ``span`` of the domain reaches on the range (negative on a y axis)."""
        (d0, d1), (r0, r1) = self.domain, self.range
        return (r1 - r0) * span / (d1 - d0)

    def points(self, x: Scale, xs: Iterable[float], ys: Iterable[float]) -> list[Point]:
        """``(x(a), self(b))`` for each pair: data points as SVG points, this scale being y."""
        return [(x(a), self(b)) for a, b in zip(xs, ys, strict=True)]


def ticks(stop: float, step: float) -> list[float]:
    """0, ``step``, 2 ``step``, ... up to ``stop`` (inclusive, allowing for rounding)."""
    return [i * step for i in range(int(stop / step + 1e-9) + 1)]


def nice_max(value: float) -> int:
    """A round, even axis maximum at or above ``value`` (even, so the midpoint tick is whole)."""
    if value <= 2:
        return 2
    magnitude = int(10 ** (len(str(math.ceil(value))) - 1))
    for step in (1, 2, 4, 5, 6, 8, 10):
        if step * magnitude >= value and step * magnitude % 2 == 0:
            return step * magnitude
    return 10 * magnitude


def path(points: Iterable[Point], close: bool = False) -> str:
    """An SVG path through ``points`` (``Z`` closes it)."""
    return "M" + " L".join(f"{x:g},{y:g}" for x, y in points) + (" Z" if close else "")


def polyline(points: Iterable[Point]) -> str:
    """The ``points`` attribute of an SVG polyline."""
    return " ".join(f"{x:g},{y:g}" for x, y in points)


def steps(start: Point, changes: Iterable[Point], end: float) -> list[Point]:
    """A step function from ``start``: at each ``(x, y)`` of ``changes`` it jumps to ``y``; the
    last level runs on to ``x = end`` (a Kaplan-Meier curve)."""
    out = [start]
    for x, y in changes:
        out += [(x, out[-1][1]), (x, y)]
    return [*out, (end, out[-1][1])]


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment of a stacked bar: ``key`` and its value, its top edge ``y`` and ``height``."""

    key: str
    value: float
    y: float
    height: float


@dataclass(frozen=True, slots=True)
class Bar:
    """A stacked bar (``x`` and ``width`` not rounded: format them when drawing)."""

    x: float
    width: float
    segments: tuple[Segment, ...]


def stacked_bars(
    y: Scale, left: float, width: float, stacks: Sequence[Sequence[tuple[str, float]]]
) -> list[Bar]:
    """One bar per stack in equal slots over ``width`` from ``left`` (bars fill 3/4 of a slot),
    its positive values stacked upwards from 0 in the order given."""
    slot, out = width / len(stacks), []
    bar = max(1.0, slot * 0.75)
    for i, stack in enumerate(stacks):
        segments, edge = [], y(0)
        for key, value in stack:
            if value > 0:
                length = y.length(value)
                segments.append(Segment(key, value, min(edge, edge + length), abs(length)))
                edge += length
        out.append(Bar(left + i * slot + (slot - bar) / 2, bar, tuple(segments)))
    return out
