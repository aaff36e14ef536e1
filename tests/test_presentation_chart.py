"""The shared SVG chart geometry: scales, ticks, paths, steps and stacked bars."""

from __future__ import annotations

import pytest

from cds_service.presentation.chart import (
    Scale,
    nice_max,
    path,
    polyline,
    stacked_bars,
    steps,
    ticks,
)


def test_a_y_scale_runs_from_the_bottom_up_and_rounds_to_a_tenth() -> None:
    y = Scale((0, 1), (264, 34))
    assert (y(0), y(1), y(0.5), y(1 / 3)) == (264, 34, 149, 187.3)
    assert y.length(0.5) == -115
    assert Scale((0, 12), (64, 656), digits=None)(1) == pytest.approx(64 + 592 / 12)


def test_clamping_keeps_points_inside_the_plot() -> None:
    x = Scale((0, 12), (48, 348), clamp=True)
    assert (x(-1), x(13), x(3)) == (48, 348, 123)
    assert Scale((0, 12), (48, 348))(13) == 373


def test_ticks_stop_at_the_end_of_the_axis() -> None:
    assert ticks(12, 3) == [0, 3, 6, 9, 12]
    assert ticks(7.5, 3) == [0, 3, 6]
    assert ticks(1.0, 0.2)[-1] == pytest.approx(1.0) and len(ticks(1.0, 0.2)) == 6


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 2), (2, 2), (3, 4), (7, 8), (9, 10), (11, 20), (41, 50), (61, 80), (501, 600)],
)
def test_nice_max_is_round_and_even(value: int, top: int) -> None:
    assert nice_max(value) == top


def test_paths_and_polylines() -> None:
    points = [(64.0, 264.0), (212.5, 100.1)]
    assert path(points) == "M64,264 L212.5,100.1"
    assert path(points, close=True).endswith(" Z")
    assert polyline(points) == "64,264 212.5,100.1"
    x, y = Scale((0, 12), (64, 656)), Scale((0, 1), (264, 34))
    assert y.points(x, [0, 12], [0, 1]) == [(64, 264), (656, 34)]


def test_steps_hold_each_level_until_the_next_change() -> None:
    assert steps((0, 0), [(2, 0.1), (5, 0.3)], 12) == [
        (0, 0),
        (2, 0),
        (2, 0.1),
        (5, 0.1),
        (5, 0.3),
        (12, 0.3),
    ]


def test_stacked_bars_stack_positive_values_upwards_in_equal_slots() -> None:
    y = Scale((0, 8), (200, 40), digits=None)
    first, empty = stacked_bars(y, 50, 200, [[("a", 2), ("b", 0), ("c", 4)], []])
    assert (first.x, first.width) == (62.5, 75)
    assert [(s.key, s.value, s.y, s.height) for s in first.segments] == [
        ("a", 2, 160, 40),
        ("c", 4, 80, 80),
    ]
    assert empty.x == 162.5 and empty.segments == ()
