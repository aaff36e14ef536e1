"""Validation: C-index and Kaplan-Meier equal lifelines; calibration tells a miscalibrated card from
a recalibrated one; the HTML report is self-contained with well-formed inline SVG."""

from __future__ import annotations

import copy
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from lifelines import KaplanMeierFitter  # type: ignore[import-untyped,unused-ignore]
from lifelines.utils import concordance_index  # type: ignore[import-untyped,unused-ignore]

from cds_service.model import ModelCard, parse_model_card
from cds_service.recalibration import (
    Cohort,
    build_card,
    cohort_from_arrays,
    harrell_c,
    kaplan_meier,
    read_card_json,
    recalibrate,
    simulate_cohort,
    validate,
)
from cds_service.recalibration.validate import ValidationOptions, render_html, render_text

PUBLISHED, PUBLISHED_JSON = read_card_json(None)
#: A small bootstrap keeps these tests fast; the statistics checked here do not depend on it.
FAST = ValidationOptions(replicates=20)


def low_recurrence_card() -> ModelCard:
    """A site with fewer recurrences than the published cohort (same coefficients)."""
    data = copy.deepcopy(PUBLISHED_JSON)
    data["baseline"]["knots"] = [
        {"month": m, "survival": s} for m, s in ((0, 1.0), (3, 0.9), (6, 0.8), (12, 0.55))
    ]
    return parse_model_card(data)


@pytest.fixture(scope="module")
def site_cohort() -> Cohort:
    """900 patients (seeded) from the low-recurrence site."""
    return simulate_cohort(low_recurrence_card(), 900, seed=31)


@pytest.fixture(scope="module")
def refit(site_cohort: Cohort) -> ModelCard:
    """The published card with its baseline refitted on the site's cohort."""
    rec = recalibrate(site_cohort, PUBLISHED, "baseline")
    return parse_model_card(build_card(rec, PUBLISHED_JSON), sha256="refit")


def test_harrell_c_equals_lifelines_with_tied_times_and_predictions() -> None:
    rng = np.random.default_rng(3)
    t = rng.integers(1, 20, 400).astype(float)
    e = rng.integers(0, 2, 400)
    risk = rng.integers(0, 5, 400).astype(float)
    # lifelines scores survival (higher = later), so the risk goes in negated.
    assert harrell_c(t, e, risk) == pytest.approx(concordance_index(t, -risk, e), abs=1e-12)


def test_kaplan_meier_and_its_confidence_interval_equal_lifelines() -> None:
    rng = np.random.default_rng(4)
    t = np.round(rng.exponential(6.0, 300), 1)
    e = rng.integers(0, 2, 300)
    ours = kaplan_meier(t, e)
    theirs = KaplanMeierFitter().fit(t, e)
    for month in (0.5, 3.0, 6.0, 12.0):
        s, low, high = ours.at(month)
        assert s == pytest.approx(
            float(theirs.survival_function_at_times(month).iloc[0]), abs=1e-12
        )
        ci = theirs.confidence_interval_.loc[:month].iloc[-1]
        assert (low, high) == pytest.approx((ci.iloc[0], ci.iloc[1]), abs=1e-9)
    assert math.isnan(ours.at(float(t.max()) + 1)[0])  # no follow-up there: no observed value


def test_a_card_validated_on_its_own_population_is_calibrated() -> None:
    cohort = simulate_cohort(PUBLISHED, 1500, seed=12)
    v = validate(PUBLISHED, cohort, options=FAST)
    assert v.c_index > 0.75
    assert v.slope_ci[0] < 1.0 < v.slope_ci[1]
    assert v.observed_expected == pytest.approx(1.0, abs=0.08)
    for c in v.calibration:
        assert abs(c.predicted - c.observed) < 0.06, c
    # Groups are cut between distinct predicted risks: identical patients share a group.
    lp = cohort.covariates(PUBLISHED) @ [-0.619, -2.589]
    for value in np.unique(lp):
        assert len(np.unique(v.groups[lp == value])) == 1
    predicted_12 = [v.at(g, 12).predicted for g in (1, 2, 3)]
    assert predicted_12 == sorted(predicted_12)  # group 3 is the highest risk


def test_the_published_card_over_predicts_at_a_low_recurrence_site_and_the_refit_does_not(
    site_cohort: Cohort, refit: ModelCard
) -> None:
    published = validate(PUBLISHED, site_cohort, options=FAST)
    local = validate(refit, site_cohort, options=FAST)
    assert published.observed_expected < 0.8
    assert local.observed_expected == pytest.approx(1.0, abs=0.06)
    # Same coefficients: same ranking, same C-index; only the absolute risks move.
    assert local.c_index == pytest.approx(published.c_index)
    # Every tertile at 12 months: the published card over-predicts by 4-28 points; the refit's
    # prediction lies inside the Kaplan-Meier 95% confidence interval.
    for g in (1, 2, 3):
        old, new = published.at(g, 12), local.at(g, 12)
        assert old.predicted > old.observed_high
        assert new.observed_low < new.predicted < new.observed_high


def test_html_report_shows_both_cards_side_by_side_with_inline_svg(
    site_cohort: Cohort, refit: ModelCard
) -> None:
    results = [
        validate(PUBLISHED, site_cohort, "published <card>", FAST),
        validate(refit, site_cohort, options=FAST),
    ]
    page = render_html(results, site_cohort)
    assert page.startswith("<!DOCTYPE html>") and page.count('<section class="model">') == 2
    assert "published &lt;card&gt;" in page and "published <card>" not in page
    svgs = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    assert len(svgs) == 4  # calibration and Kaplan-Meier per card
    for svg in svgs:
        ET.fromstring(svg)  # well-formed XML
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert "C-index" in page and "Calibration slope" in page and "12 months" in page
    text = render_text(results)
    assert "C-index" in text and "group 3 by    12 months" in text


def test_groups_whose_follow_up_stops_early_have_no_observed_value() -> None:
    n = 60
    cohort = cohort_from_arrays(
        np.tile([25.0, 40.0], n // 2),
        np.tile([1, 2, 3], n // 3),
        np.linspace(0.5, 8.0, n),
        np.tile([1, 0], n // 2),
    )
    v = validate(PUBLISHED, cohort, options=FAST)
    # Nobody reaches 12 months: the figures move to the latest time with 10 still followed.
    assert v.horizon.rule == "latest-with-min-at-risk" and v.horizon.months < 8.0
    assert all(c.month <= v.horizon.months for c in v.calibration)
    text = render_text([v])
    assert "n/a" not in text
    assert "12 months: not reported: only 0 patient(s) followed to 12 months" in text
    assert f"evaluation horizon: {v.horizon.months:.2f} months" in text


def test_a_constant_prediction_has_no_calibration_slope() -> None:
    n = 30
    cohort = cohort_from_arrays(
        np.full(n, 40.0), np.full(n, 2), np.linspace(1, 12, n), np.tile([1, 0], n // 2)
    )
    v = validate(PUBLISHED, cohort, options=FAST)
    assert math.isnan(v.slope) and v.c_index == 0.5
    assert any("calibration slope not estimable" in str(note) for note in v.notes)
