"""``fit --mode slope`` against lifelines, the refitted card's covariance, caveat and definitions, and
the validation report a methods reviewer reads: a named horizon, intervals, optimism, strict JSON."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter  # type: ignore[import-untyped,unused-ignore]

from cds_service.cli import main
from cds_service.model import load_model_card, parse_model_card
from cds_service.model.card import DEFAULT_MODEL_CARD
from cds_service.recalibration import (
    Cohort,
    CohortError,
    FitOptions,
    build_card,
    cohort_from_arrays,
    read_card_json,
    recalibrate,
    simulate_cohort,
)
from cds_service.recalibration.report import report_json
from cds_service.recalibration.validate import ValidationOptions, render_html, validate

PUBLISHED, PUBLISHED_JSON = read_card_json(None)
B = np.array([PUBLISHED.operation_time.coefficient, PUBLISHED.hb_grade.coefficient])
PUBLISHED_FILE = (
    Path(__file__).parents[1] / "cds_service" / "model" / "model_cards" / DEFAULT_MODEL_CARD
)


@pytest.fixture(scope="module")
def site() -> Cohort:
    """300 patients of a site where the published coefficients are too strong (seeded)."""
    data = copy.deepcopy(PUBLISHED_JSON)
    data["covariates"]["operation_time"]["coefficient"] = -0.4
    data["covariates"]["hb_grade"]["coefficient"] = -1.5
    return simulate_cohort(parse_model_card(data), 300, seed=8)


def test_slope_mode_is_a_one_covariate_cox_fit_on_the_published_linear_predictor(
    site: Cohort,
) -> None:
    rec = recalibrate(site, PUBLISHED, "slope")
    x = site.covariates(PUBLISHED)
    t = np.minimum(site.time_months, 12.0)
    e = ((site.event == 1) & (site.time_months <= 12.0)).astype(int)
    frame = pd.DataFrame({"lp": x @ B, "T": t, "E": e})
    # Efron ties, as ours; a tight stop compares the estimators, not the stopping rules.
    theirs = CoxPHFitter().fit(
        frame, "T", "E", fit_options={"precision": 1e-12, "r_precision": 1e-15}
    )
    slope, se = float(theirs.params_["lp"]), float(theirs.standard_errors_["lp"])
    assert rec.cox is not None
    assert float(rec.cox.params_[0]) == pytest.approx(slope, abs=1e-6)
    assert float(rec.cox.standard_errors_[0]) == pytest.approx(se, abs=1e-6)
    assert rec.params == pytest.approx(tuple(slope * B), abs=1e-6)
    assert 0.4 < slope < 0.8  # the site's weaker effects are found
    covariance = rec.covariance
    assert covariance is not None
    np.testing.assert_allclose(covariance, se**2 * np.outer(B, B), rtol=1e-5)


def test_the_slope_card_carries_covariance_caveat_definitions_and_unknown_fields(
    site: Cohort,
) -> None:
    source = copy.deepcopy(PUBLISHED_JSON)
    source["x_site_extension"] = {"kept": True}
    data = build_card(recalibrate(site, PUBLISHED, "slope"), source)
    card = parse_model_card(data)
    assert card.fit["mode"] == "slope"
    slope = data["fit"]["slope"]["estimate"]
    se = data["fit"]["slope"]["se"]
    assert card.operation_time.coefficient == pytest.approx(slope * B[0], rel=1e-8)
    assert data["fit"]["covariance_order"] == ["operation_time", "hb_grade"]
    np.testing.assert_allclose(data["fit"]["covariance"], se**2 * np.outer(B, B), rtol=1e-6)
    for j, name in enumerate(("operation_time", "hb_grade")):
        entry = data["fit"]["coefficients"][name]
        assert entry["se"] == pytest.approx(se * abs(B[j]), rel=1e-8)
        assert entry["ci95"][0] < entry["estimate"] < entry["ci95"][1]
    assert data["caveat"] == (
        "Recalibrated on 300 local patients (n=300 seed=8); informational only; see assumptions "
        "and limitations."
    )
    assert data["x_site_extension"] == {"kept": True}
    definitions = data["fit"]["definitions"]
    assert definitions["outcome"].startswith("Simulated recurrence times")
    assert (
        definitions["administrative_censoring"] == "Follow-up beyond 12 months is censored there."
    )


def test_a_full_refit_card_carries_its_covariance_matrix(site: Cohort) -> None:
    rec = recalibrate(site, PUBLISHED, "full")
    data = build_card(rec, PUBLISHED_JSON)
    assert rec.cox is not None
    np.testing.assert_allclose(data["fit"]["covariance"], rec.cox.variance_matrix_, rtol=1e-8)
    assert data["caveat"].startswith("Recalibrated on 300 local patients")


def test_slope_mode_with_too_few_recurrences_says_so() -> None:
    n = 30
    cohort = cohort_from_arrays(
        np.tile([25.0, 40.0], n // 2), np.tile([1, 2, 3], n // 3), np.full(n, 12.0),
        np.r_[np.ones(6), np.zeros(n - 6)],
    )  # fmt: skip
    with pytest.raises(CohortError) as raised:
        recalibrate(cohort, PUBLISHED, "slope", FitOptions(min_events=5))
    assert str(raised.value) == (
        "6 recurrences are too few to fit a calibration slope (at least 10: 10 per coefficient); "
        "recalibrate the baseline only (--mode baseline)"
    )


# -- the report ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_site() -> Cohort:
    """99 patients whose follow-up stops just short of 12 months (11.97), with a checksum."""
    cohort = simulate_cohort(PUBLISHED, 99, seed=7, follow_up_months=11.97)
    return Cohort(cohort.rows, source="csv", location="site.csv", sha256="a" * 64)


def _estimates(tree: Any) -> Iterator[dict[str, Any]]:
    if isinstance(tree, dict):
        if "estimate" in tree and "ci95" in tree:
            yield tree
        for value in tree.values():
            yield from _estimates(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _estimates(value)


def test_every_figure_is_at_a_named_horizon_with_an_interval_or_a_reason(
    short_site: Cohort,
) -> None:
    full = parse_model_card(
        build_card(recalibrate(short_site, PUBLISHED, "full", _short()), PUBLISHED_JSON)
    )
    options = ValidationOptions(replicates=20, seed=3)
    results = [validate(PUBLISHED, short_site, "published", options)]
    results.append(validate(full, short_site, "full", options))
    report = report_json(results, short_site)
    text = json.dumps(report, allow_nan=False)  # strict JSON
    assert "n/a" not in text and "NaN" not in text
    for model in report["models"]:
        horizon = model["horizon"]
        assert horizon["months"] == pytest.approx(11.97)
        assert horizon["rule"] == "latest-with-min-at-risk" and horizon["at_risk"] >= 10
        for name in ("harrell_c", "uno_c", "calibration_slope", "observed_expected"):
            assert model["metrics"][name]["ci95"] is not None, name
        assert [r["month"] for r in model["not_reported"]] == [12.0]
    for estimate in _estimates(report):
        assert estimate["ci95"] is not None or estimate["note"], estimate
    published, refit = report["models"]
    assert published["optimism"] == {
        "applied": False,
        "note": "not applicable: the card's coefficients were not fitted on local data "
        "(fit mode published)",
    }
    # The refit is validated on the cohort it was fitted on (same checksum): optimism-corrected.
    assert refit["optimism"]["applied"] is True
    assert refit["metrics"]["harrell_c"]["corrected"] == pytest.approx(
        refit["metrics"]["harrell_c"]["estimate"] - refit["metrics"]["harrell_c"]["optimism"]
    )
    assert report["cohort"]["follow_up"]["method"].startswith("reverse Kaplan-Meier")
    assert set(report["cohort"]["predictors"]) == {
        "operation_minutes",
        "hb_grade",
        "operation_over_cut",
    }
    page = render_html(results, short_site)
    assert "Evaluation horizon: <strong>11.97 months</strong>" in page
    assert "Optimism-corrected" in page and "reverse Kaplan-Meier" in page


def test_optimism_is_not_applied_on_other_data(short_site: Cohort) -> None:
    card = parse_model_card(
        build_card(recalibrate(short_site, PUBLISHED, "slope", _short()), PUBLISHED_JSON)
    )
    other = simulate_cohort(PUBLISHED, 80, seed=99)
    v = validate(card, other, options=ValidationOptions(replicates=5))
    assert not v.optimism
    assert str(v.optimism_note) == (
        "not applied: this cohort is not the one the card was fitted on (input checksum differs), "
        "so its performance is not apparent"
    )


def _short() -> FitOptions:
    return FitOptions(allow_short_follow_up=True)


def test_validate_json_and_html_formats(
    short_site: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "site.csv"
    csv.write_text(short_site.to_csv())
    base = ["validate", "--model", str(PUBLISHED_FILE), "--csv", str(csv), "--bootstrap", "10"]
    assert main([*base, "--format", "json", "--seed", "4"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["schema"] == "hfs-cds.validation-report/1"
    assert report["settings"]["bootstrap_replicates"] == 10 and report["settings"]["seed"] == 4
    assert "validated 1 card(s) on 99 patients" in err
    page = tmp_path / "r.html"
    assert main([*base, "--format", "html", "--out", str(page)]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(SystemExit):
        main([*base, "--bootstrap", "-1"])
    assert "-1 is negative" in capsys.readouterr().err
    assert math.isfinite(report["models"][0]["metrics"]["uno_c"]["estimate"])
    assert load_model_card(PUBLISHED_FILE).id == report["models"][0]["card"]["id"]
