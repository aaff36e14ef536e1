"""The numpy Cox fitter equals lifelines' CoxPHFitter, recovers known coefficients, and fails clearly.

lifelines (with pandas and scipy) is a test-only dependency: the service never imports it.
lifelines reports its Breslow baseline for the mean covariate vector, ours is for covariates zero,
so the comparison multiplies ours by ``exp(mean @ params)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import pytest
from lifelines import CoxPHFitter  # type: ignore[import-untyped,unused-ignore]
from lifelines.datasets import load_rossi  # type: ignore[import-untyped,unused-ignore]
from scipy import stats  # type: ignore[import-untyped,unused-ignore]

from cds_service.model import load_model_card
from cds_service.recalibration import (
    CohortError,
    ConvergenceError,
    CoxPH,
    SeparationError,
    breslow,
    simulate_cohort,
)
from cds_service.recalibration.coxph import chi2_sf

TOL = 1e-6
#: lifelines' defaults stop at a Newton step of 1e-7; a tighter stop compares the estimators, not
#: the stopping rules.
LIFELINES_FIT = {"precision": 1e-12, "r_precision": 1e-15}


def _lifelines(df: pd.DataFrame, duration: str, event: str) -> CoxPHFitter:
    return CoxPHFitter().fit(df, duration, event, fit_options=LIFELINES_FIT)


def _compare(df: pd.DataFrame, duration: str, event: str) -> dict[str, float]:
    """Largest absolute difference per quantity between lifelines and :class:`CoxPH`."""
    covariates = [c for c in df.columns if c not in (duration, event)]
    theirs = _lifelines(df, duration, event)
    ours = CoxPH().fit(df[covariates].to_numpy(), df[duration], df[event], names=covariates)
    their_h = theirs.baseline_cumulative_hazard_
    our_h = ours.cumulative_baseline_hazard(their_h.index.to_numpy()) * np.exp(
        ours.mean_ @ ours.params_
    )
    their_lr = theirs.log_likelihood_ratio_test()
    return {
        "params": float(np.abs(ours.params_ - theirs.params_.to_numpy()).max()),
        "se": float(np.abs(ours.standard_errors_ - theirs.standard_errors_.to_numpy()).max()),
        "loglik": abs(ours.log_likelihood_ - theirs.log_likelihood_),
        "baseline": float(np.abs(our_h - their_h.iloc[:, 0].to_numpy()).max()),
        "ci": float(
            np.abs(ours.confidence_intervals_ - theirs.confidence_intervals_.to_numpy()).max()
        ),
        "lr": abs(ours.log_likelihood_ratio_test_.statistic - their_lr.test_statistic),
    }


def _tied_cohort(seed: int, n: int = 300) -> pd.DataFrame:
    """Three covariates, times rounded to whole weeks (many ties), about 30% censored."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        (rng.integers(0, 2, n), rng.integers(1, 4, n), rng.normal(0.0, 1.0, n))
    ).astype(float)
    rate = np.exp(x @ np.array([0.7, -0.5, 0.3])) / 20.0
    event_time = rng.exponential(1.0 / rate)
    censor = rng.uniform(5.0, 60.0, n)
    weeks = np.ceil(np.minimum(event_time, censor))
    return pd.DataFrame(
        {
            "binary": x[:, 0],
            "ordinal": x[:, 1],
            "continuous": x[:, 2],
            "weeks": weeks,
            "event": (event_time <= censor).astype(int),
        }
    )


def test_equals_lifelines_on_rossi() -> None:
    diffs = _compare(load_rossi(), "week", "arrest")
    assert max(diffs.values()) < TOL, diffs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equals_lifelines_on_simulated_cohorts_with_ties(seed: int) -> None:
    df = _tied_cohort(seed)
    assert df["weeks"].duplicated().sum() > 200  # the point: heavy ties, where Efron matters
    diffs = _compare(df, "weeks", "event")
    assert max(diffs.values()) < TOL, diffs


def test_equals_lifelines_on_the_products_covariates() -> None:
    """X1 binary and X2 ordinal from a card-simulated cohort, follow-up in whole weeks."""
    cohort = simulate_cohort(load_model_card(), 400, seed=5)
    x = cohort.covariates(load_model_card())
    df = pd.DataFrame(
        {
            "x1": x[:, 0],
            "x2": x[:, 1],
            "weeks": np.ceil(cohort.time_months * 30.4375 / 7),
            "event": cohort.event.astype(int),
        }
    )
    diffs = _compare(df, "weeks", "event")
    assert max(diffs.values()) < TOL, diffs


def test_recovers_the_cards_coefficients_within_three_standard_errors() -> None:
    """3000 patients drawn from the published card: each estimate within 3 SE of the truth.

    The seed is fixed, so this cannot flake; a correct fitter passes at 3 SE for 99.7% of seeds.
    When the test was written, seeds 0-19 gave |z| at most 2.3 and z with SD 1.0 for both
    coefficients, as an unbiased estimator with correct standard errors should.
    """
    card = load_model_card()
    cohort = simulate_cohort(card, 3000, seed=11)
    fit = CoxPH().fit(cohort.covariates(card), cohort.time_months, cohort.event)
    truth = np.array([card.operation_time.coefficient, card.hb_grade.coefficient])
    z = (fit.params_ - truth) / fit.standard_errors_
    assert np.all(np.abs(z) < 3.0), z
    assert np.all(fit.standard_errors_ < 0.1)  # a sample big enough for 3 SE to mean something
    low, high = fit.confidence_intervals_.T
    assert np.all((low < truth) & (truth < high))


def test_breslow_at_a_reference_patient_is_the_baseline_times_its_partial_hazard() -> None:
    df = _tied_cohort(4)
    x = df[["binary", "ordinal", "continuous"]].to_numpy()
    fit = CoxPH().fit(x, df["weeks"], df["event"])
    at = np.array([0.5, 2.0, 0.1])
    times, cumhaz = breslow(x, df["weeks"], df["event"], fit.params_, at=at)
    np.testing.assert_allclose(times, fit.baseline_times_)
    np.testing.assert_allclose(cumhaz, fit.baseline_cumulative_hazard_ * np.exp(at @ fit.params_))


def test_likelihood_ratio_test_and_p_values_use_the_chi_squared_distribution() -> None:
    for statistic in (0.0, 0.3, 3.84, 12.5, 55.769):
        for df in (1, 2, 3, 7):
            assert chi2_sf(statistic, df) == pytest.approx(stats.chi2.sf(statistic, df), abs=1e-12)
    fit = CoxPH().fit(*_xyz(_tied_cohort(6)))
    lr = fit.log_likelihood_ratio_test_
    assert lr.degrees_of_freedom == 3
    assert lr.statistic == pytest.approx(2 * (fit.log_likelihood_ - fit.log_likelihood_null_))
    assert lr.p_value == pytest.approx(stats.chi2.sf(lr.statistic, 3), rel=1e-9)


def _xyz(df: pd.DataFrame) -> tuple[Any, Any, Any]:
    return df[["binary", "ordinal", "continuous"]].to_numpy(), df["weeks"], df["event"]


# -- degenerate cohorts -------------------------------------------------------------------------------


@pytest.fixture
def small() -> dict[str, Any]:
    """60 patients with a binary and an ordinal covariate and exponential times (seeded)."""
    rng = np.random.default_rng(1)
    n = 60
    return {
        "x1": rng.integers(0, 2, n).astype(float),
        "x2": rng.integers(1, 4, n).astype(float),
        "t": rng.exponential(5.0, n),
        "e": rng.integers(0, 2, n).astype(float),
    }


def test_all_censored_is_a_clear_error(small: dict[str, Any]) -> None:
    with pytest.raises(CohortError, match="no events among 60 patients: every patient is censored"):
        CoxPH().fit(np.column_stack((small["x1"], small["x2"])), small["t"], np.zeros(60))


def test_empty_cohort_is_a_clear_error() -> None:
    with pytest.raises(CohortError, match="the cohort is empty"):
        CoxPH().fit(np.zeros((0, 2)), [], [])


def test_too_few_patients_for_the_coefficients() -> None:
    with pytest.raises(CohortError, match="3 patients are too few to estimate 2 coefficient"):
        CoxPH().fit([[0, 1], [1, 2], [0, 3]], [1, 2, 3], [1, 1, 0])


def test_a_constant_covariate_is_named(small: dict[str, Any]) -> None:
    x = np.column_stack((small["x1"], np.full(60, 2.0)))
    with pytest.raises(CohortError, match="hb takes the same value for every patient"):
        CoxPH().fit(x, small["t"], small["e"], names=["op", "hb"])


@pytest.mark.parametrize("direction", ["events only where x1 = 0", "events only where x1 = 1"])
def test_perfect_separation_is_detected(small: dict[str, Any], direction: str) -> None:
    group = 0.0 if direction.endswith("0") else 1.0
    events = (small["x1"] == group).astype(float)
    x = np.column_stack((small["x1"], small["x2"]))
    with pytest.raises(SeparationError, match="perfect separation.*op .*runs to infinity"):
        CoxPH().fit(x, small["t"], events, names=["op", "hb"])


def test_separation_along_an_ordered_covariate_is_detected() -> None:
    """Each patient recurs exactly in the order of the covariate: monotone likelihood."""
    x = np.arange(30.0)
    with pytest.raises(SeparationError):
        CoxPH().fit(x, 30.0 - x, np.ones(30))


def test_separation_is_a_convergence_error_and_a_value_error() -> None:
    assert issubclass(SeparationError, ConvergenceError)
    assert issubclass(ConvergenceError, ValueError)


def test_collinear_covariates_are_a_convergence_error_not_separation(
    small: dict[str, Any],
) -> None:
    x = np.column_stack((small["x2"], 2.0 * small["x2"] + 1.0))
    with pytest.raises(ConvergenceError, match="collinear") as info:
        CoxPH().fit(x, small["t"], small["e"])
    assert not isinstance(info.value, SeparationError)


@pytest.mark.parametrize(
    ("durations", "events", "message"),
    [
        ([1.0, -2.0, 3.0, 4.0], [1, 0, 1, 1], "not negative"),
        ([1.0, np.nan, 3.0, 4.0], [1, 0, 1, 1], "finite"),
        ([1.0, 2.0, 3.0, 4.0], [1, 2, 1, 1], "0 \\(censored\\) or 1"),
        ([1.0, 2.0, 3.0], [1, 0, 1, 1], "one row per patient"),
    ],
)
def test_malformed_data_is_rejected(
    durations: list[float], events: list[int], message: str
) -> None:
    with pytest.raises(CohortError, match=message):
        CoxPH().fit([0.0, 1.0, 0.0, 1.0], durations, events)
