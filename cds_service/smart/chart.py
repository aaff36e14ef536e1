"""The risk curve as inline SVG geometry: computed here, drawn by the template, no plotting library.

The curve and its scenario band come from :meth:`RecurrenceModel.risk_with_range` on a month grid
(the model card's horizon in eighths of a month, so the report months fall on the grid and the
markers sit exactly on the line). The numbers at the markers are the assessment's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cds_service.model import RecurrenceModel
from cds_service.presentation import percent

WIDTH, HEIGHT = 680, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 34, 56
STEPS_PER_MONTH = 8


@dataclass(frozen=True, slots=True)
class Curve:
    """One scenario-ranged risk curve: months, point estimate, lowest and highest coding."""

    months: tuple[float, ...]
    risk: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True, slots=True)
class Marker:
    month: float
    risk: float
    x: float
    y: float
    label: str
    label_y: float


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything the SVG template needs, in SVG user units."""

    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    line: str
    band: str
    markers: tuple[Marker, ...]
    today_x: float | None
    today_y: float | None
    today_label: str | None
    what_if_line: str | None


def curve(model: RecurrenceModel, minutes: float, hb_grade: int) -> Curve:
    """Risk from the ablation to the horizon on a fine month grid (risk 0 at month 0)."""
    horizon = model.card.horizon_months
    grid = np.linspace(0.0, horizon, int(round(horizon * STEPS_PER_MONTH)) + 1)
    point, low, high = model.risk_with_range(minutes, hb_grade, grid[1:])
    zero = (0.0,)
    return Curve(
        months=tuple(float(m) for m in grid),
        risk=zero + tuple(float(v) for v in point),
        low=zero + tuple(float(v) for v in low),
        high=zero + tuple(float(v) for v in high),
    )


class Scale:
    """Months → x and risk (0-1) → y inside the plot area."""

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self.x0, self.x1 = float(LEFT), float(WIDTH - RIGHT)
        self.y0, self.y1 = float(HEIGHT - BOTTOM), float(TOP)

    def x(self, month: float) -> float:
        return round(self.x0 + (self.x1 - self.x0) * month / self.horizon, 1)

    def y(self, risk: float) -> float:
        return round(self.y0 - (self.y0 - self.y1) * risk, 1)


def path(scale: Scale, months: Sequence[float], values: Sequence[float]) -> str:
    """An SVG polyline path through (month, value) points."""
    points = [f"{scale.x(m):g},{scale.y(v):g}" for m, v in zip(months, values, strict=True)]
    return "M" + " L".join(points)


def line_path(horizon: float, c: Curve) -> str:
    """The point-estimate line of ``c`` (the what-if line the page's script swaps in)."""
    return path(Scale(horizon), c.months, c.risk)


def build_chart(
    horizon: float,
    main: Curve,
    markers: Sequence[tuple[float, float]],
    months_since: float | None,
    what_if: Curve | None = None,
) -> Chart:
    """The chart for ``main`` with a marker per ``(month, risk)`` and "today" if inside the horizon."""
    scale = Scale(horizon)
    band_points = [
        *zip(main.months, main.high, strict=True),
        *reversed(list(zip(main.months, main.low, strict=True))),
    ]
    band = path(scale, [m for m, _ in band_points], [v for _, v in band_points]) + " Z"
    step = 3 if horizon > 6 else 1
    x_ticks = tuple(
        Tick(scale.x(m), f"{m:g}") for m in np.arange(0, horizon + 1e-9, 1.0) if m % step == 0
    )
    # Axis ticks are plain numbers (the axis title says "%"): "0%" and "100%" are never risks.
    y_ticks = tuple(Tick(scale.y(r / 100), f"{r}") for r in range(0, 101, 20))
    placed = []
    for month, risk in markers:
        y = scale.y(risk)
        placed.append(
            Marker(
                month=month,
                risk=risk,
                x=scale.x(month),
                y=y,
                label=percent(risk),
                label_y=y - 10,
            )
        )
    today_x = today_label = today_y = None
    if months_since is not None and 0 < months_since <= horizon:
        today_x = scale.x(months_since)
        today_label = f"Today ({months_since:.1f} mo)"
        # The label goes where the curve is not: low in the plot when the risk is high by then.
        risk_today = float(np.interp(months_since, main.months, main.risk))
        today_y = scale.y0 - 8 if risk_today > 0.5 else scale.y1 + 12
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=scale.x0,
        right=scale.x1,
        top=scale.y1,
        bottom=scale.y0,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        line=path(scale, main.months, main.risk),
        band=band,
        markers=tuple(placed),
        today_x=today_x,
        today_y=today_y,
        today_label=today_label,
        what_if_line=line_path(horizon, what_if) if what_if else None,
    )
