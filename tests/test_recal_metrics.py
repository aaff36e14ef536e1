"""Validation statistics without a lifelines equivalent, against hand-computed tiny cases: Uno's C,
reverse Kaplan-Meier follow-up, the evaluation horizon, tie-safe risk groups, Kaplan-Meier
estimates whose interval is undefined, the smoother and bootstrap reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lifelines import KaplanMeierFitter  # type: ignore[import-untyped,unused-ignore]
from numpy.typing import NDArray

from cds_service.recalibration import CohortError, cohort_from_arrays, read_card_json
from cds_service.recalibration.bootstrap import Bootstrap, resamples
from cds_service.recalibration.metrics import (
    Estimate,
    evaluation_horizon,
    follow_up_time,
    harrell_c,
    kaplan_meier,
    risk_groups,
    smoothed_calibration,
    uno_c,
)
from cds_service.recalibration.notes import Note
from cds_service.recalibration.validate import ValidationOptions, validate

PUBLISHED, _ = read_card_json(None)

# Five patients: recurrences at 1, 3, 4; censored at 2 and 5.
T = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
E = np.array([1, 0, 1, 1, 0])
R = np.array([5.0, 3.0, 4.0, 1.0, 2.0])


def test_uno_c_by_hand() -> None:
    """Reverse KM of censoring: G = 1 before 2, 3/4 from 2 (4 at risk), so G(3-) = G(4-) = 3/4.
    Usable pairs (T_i < T_j): i=1 with 4 later patients, all concordant (weight 1); i=3 with 2,
    both concordant, and i=4 with 1, discordant (weight 1/(3/4)^2 = 16/9 each).
    C = (4 + 2 * 16/9) / (4 + 3 * 16/9) = 17/21; Harrell's C (unweighted) = 6/7."""
    assert uno_c(T, E, R, horizon=4.0) == pytest.approx(17 / 21, abs=1e-12)
    assert harrell_c(T, E, R) == pytest.approx(6 / 7, abs=1e-12)
    # Truncated at 3: the recurrence at 4 no longer counts: (4 + 2w) / (4 + 2w) = 1.
    assert uno_c(T, E, R, horizon=3.0) == pytest.approx(1.0)


def test_uno_c_equals_harrell_c_without_censoring_and_ties() -> None:
    rng = np.random.default_rng(5)
    t = rng.permutation(60).astype(float) + 1
    risk = rng.normal(size=60)
    everyone = np.ones(60)
    assert uno_c(t, everyone, risk, horizon=60.0) == pytest.approx(harrell_c(t, everyone, risk))


def test_uno_c_counts_prediction_ties_one_half() -> None:
    assert uno_c([1.0, 2.0], [1, 0], [1.0, 1.0], horizon=2.0) == 0.5
    assert math.isnan(uno_c([1.0, 2.0], [0, 0], [1.0, 2.0], horizon=2.0))


def test_median_follow_up_by_reverse_kaplan_meier_by_hand_and_as_lifelines() -> None:
    """Censorings at 2, 3, 5, 6 are the reverse curve's events: at risk 5, 4, 2, 1, so it falls
    to 0.8, 0.6, 0.3, 0: the median (first <= 0.5) is 5, the quartiles (<= 0.75, <= 0.25) 3 and
    6."""
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    e = np.array([1, 0, 0, 1, 0, 0])
    follow = follow_up_time(t, e)
    assert (follow.median.value, follow.q1, follow.q3, follow.longest) == (5.0, 3.0, 6.0, 6.0)
    assert follow.median.value == KaplanMeierFitter().fit(t, 1 - e).median_survival_time_
    # Most patients followed to the end: the median is not reached, and says so.
    never = follow_up_time([1.0, 2.0, 9.0, 9.0], [0, 1, 1, 1])
    assert math.isnan(never.median.value)
    assert (
        str(never.median.note) == "not reached: more than half were still followed at 9.00 months"
    )


def test_evaluation_horizon_falls_back_to_the_latest_time_with_enough_at_risk() -> None:
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 11.97, 11.97])
    at_model = evaluation_horizon(np.append(t, [12.0, 12.5]), 12.0, min_at_risk=2)
    assert (at_model.months, at_model.rule, at_model.at_risk) == (12.0, "model-horizon", 2)
    short = evaluation_horizon(t, 12.0, min_at_risk=3)  # the 3rd longest follow-up
    assert (short.months, short.rule, short.at_risk) == (6.0, "latest-with-min-at-risk", 3)
    assert str(short.reason) == (
        "only 0 patient(s) followed to the model's 12-month horizon (fewer than 3), so the latest "
        "time with at least 3 still followed (3 at risk)"
    )
    assert evaluation_horizon(t, 12.0, min_at_risk=2).months == 11.97
    with pytest.raises(CohortError) as raised:
        evaluation_horizon(t, 12.0, min_at_risk=10)
    assert str(raised.value) == (
        "8 patients are fewer than the 10 that must remain at risk at the evaluation horizon "
        "(--min-at-risk)"
    )


def test_risk_groups_never_split_ties() -> None:
    """Distinct scores 1 (x4), 2 (x2), 3 (x5), 4 (x1); cuts nearest 4 and 8 patients fall after
    1 (4 patients) and after 2 (6 patients; 11 would be further from 8)."""
    score = np.array([3, 1, 2, 3, 1, 3, 4, 1, 3, 2, 1, 3], dtype=float)
    groups = risk_groups(score, 3)
    assert groups.tolist() == [3, 1, 2, 3, 1, 3, 3, 1, 3, 2, 1, 3]
    assert risk_groups([0.2, 0.1, 0.2, 0.1], 3).tolist() == [2, 1, 2, 1]  # two distinct: 2 groups
    rng = np.random.default_rng(11)
    for _ in range(50):
        s = rng.integers(0, 6, rng.integers(6, 200)).astype(float)
        g = risk_groups(s, 3)
        for value in np.unique(s):
            assert len(np.unique(g[s == value])) == 1
        assert np.all(np.diff(g[np.argsort(s, kind="stable")]) >= 0)  # ordered by score
        assert set(g.tolist()) == set(range(1, min(3, len(np.unique(s))) + 1))


def test_an_estimate_whose_interval_is_undefined_says_so() -> None:
    all_recurred = kaplan_meier(np.linspace(0.5, 5.0, 26), np.ones(26))
    risk = all_recurred.risk(6.0)  # past the last recurrence: still 100%
    assert (risk.value, risk.has_interval) == (1.0, False)
    assert str(risk.note) == "interval undefined: every patient at risk recurred (26 at start)"
    assert str(kaplan_meier([2.0, 3.0], [1, 0]).risk(1.0).note) == (
        "interval undefined: no recurrence by then"
    )
    stopped = kaplan_meier([2.0, 3.0], [1, 0]).risk(4.0)
    assert math.isnan(stopped.value)
    assert str(stopped.note) == "not observed: follow-up ends at 3.00 months"
    with pytest.raises(ValueError, match="an undefined estimate needs a note saying why"):
        Estimate(math.nan)
    why = Note.of("no-patient")  # JSON says a note in English
    assert Estimate(math.nan, note=why).as_json() == {
        "estimate": None,
        "ci95": None,
        "interval": None,
        "note": "no patient",
    }


def test_the_smoother_with_a_huge_bandwidth_is_the_overall_kaplan_meier() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.1, 0.9, 80)
    t = rng.uniform(0.5, 12.0, 80)
    e = rng.integers(0, 2, 80)
    curve = smoothed_calibration(p, t, e, horizon=9.0, bandwidth=1e6)
    overall = 1.0 - kaplan_meier(t, e).at(9.0)[0]
    np.testing.assert_allclose(curve.observed, overall, atol=1e-9)
    assert curve.ici == pytest.approx(float(np.mean(np.abs(overall - p))), abs=1e-9)
    flat = smoothed_calibration(np.full(5, 0.3), t[:5], e[:5], horizon=9.0)
    assert str(flat.note) == "not drawn: every patient has the same predicted risk"


def test_bootstrap_is_reproducible_with_a_seed() -> None:
    assert np.array_equal(resamples(30, 20, seed=4), resamples(30, 20, seed=4))
    assert not np.array_equal(resamples(30, 20, seed=4), resamples(30, 20, seed=5))
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)

    def mean(idx: NDArray[np.intp]) -> dict[str, float]:
        return {"mean": float(x[idx].mean()), "undefined": math.nan}

    a = Bootstrap(20, seed=4).fit(30, mean)
    b = Bootstrap(20, seed=4).fit(30, mean)
    assert a.intervals_ == b.intervals_ and a.failed_ == {"mean": 0, "undefined": 20}
    assert "undefined" not in a.intervals_
    lo, hi = a.intervals_["mean"]
    assert lo < x.mean() < hi
    assert Bootstrap(20, seed=5).fit(30, mean).intervals_ != a.intervals_


def test_validation_intervals_are_reproducible_with_a_seed() -> None:
    n = 60
    rng = np.random.default_rng(1)
    cohort = cohort_from_arrays(
        rng.integers(15, 60, n), rng.integers(1, 4, n), rng.uniform(0.5, 11.97, n),
        rng.integers(0, 2, n),
    )  # fmt: skip
    options = ValidationOptions(replicates=20, seed=9)
    first = validate(PUBLISHED, cohort, options=options)
    again = validate(PUBLISHED, cohort, options=options)
    other = validate(PUBLISHED, cohort, options=ValidationOptions(replicates=20, seed=10))
    assert first.metrics == again.metrics
    assert first.metrics["harrell_c"] != other.metrics["harrell_c"]
    for name in ("harrell_c", "uno_c", "calibration_slope", "observed_expected"):
        estimate = first.metrics[name]
        assert estimate.has_interval and estimate.low <= estimate.value <= estimate.high, name
        assert estimate.interval == "bootstrap percentile, 20 resamples"
