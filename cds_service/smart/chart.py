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
from cds_service.presentation.chart import Scale, path, ticks

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


def scales(horizon: float) -> tuple[Scale, Scale]:
    """Months -> x and risk (0-1) -> y inside the plot area."""
    return Scale((0, horizon), (LEFT, WIDTH - RIGHT)), Scale((0, 1), (HEIGHT - BOTTOM, TOP))


def line_path(horizon: float, c: Curve) -> str:
    """The point-estimate line of ``c`` (the what-if line the page's script swaps in)."""
    x, y = scales(horizon)
    return path(y.points(x, c.months, c.risk))


def build_chart(
    horizon: float,
    main: Curve,
    markers: Sequence[tuple[float, float]],
    months_since: float | None,
    what_if: Curve | None = None,
    today_label: str = "Today (%(months)s mo)",
) -> Chart:
    """The chart for ``main`` with a marker per ``(month, risk)`` and "today" if inside the horizon
    (``today_label``: the reader's language, ``%(months)s`` the months since the ablation)."""
    x, y = scales(horizon)
    band = y.points(x, main.months, main.high) + y.points(x, main.months, main.low)[::-1]
    x_ticks = tuple(Tick(x(m), f"{m:g}") for m in ticks(horizon, 3 if horizon > 6 else 1))
    # Axis ticks are plain numbers (the axis title says "%"): "0%" and "100%" are never risks.
    y_ticks = tuple(Tick(y(r / 100), f"{r}") for r in range(0, 101, 20))
    placed = tuple(
        Marker(month, risk, x(month), y(risk), percent(risk), y(risk) - 10)
        for month, risk in markers
    )
    today_x = today_y = None
    today: str | None = None
    if months_since is not None and 0 < months_since <= horizon:
        today_x = x(months_since)
        today = today_label % {"months": f"{months_since:.1f}"}
        # The label goes where the curve is not: low in the plot when the risk is high by then.
        risk_today = float(np.interp(months_since, main.months, main.risk))
        today_y = y(0) - 8 if risk_today > 0.5 else y(1) + 12
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=x(0),
        right=x(horizon),
        top=y(1),
        bottom=y(0),
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        line=path(y.points(x, main.months, main.risk)),
        band=path(band, close=True),
        markers=placed,
        today_x=today_x,
        today_y=today_y,
        today_label=today,
        what_if_line=line_path(horizon, what_if) if what_if else None,
    )
