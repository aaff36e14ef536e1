"""Recalibration writes a model card the service loads unchanged, and the card's numbers move with it.

Cohorts are drawn from model cards with a fixed seed (``simulate_cohort``), so the truth is known:
a baseline refit on patients drawn from the published card gives back the published baseline, and a
refit on patients of a "local" site with fewer recurrences moves the service's numbers to that site.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask

from cds_service import create_app
from cds_service.assessment import Assessor, Status
from cds_service.i18n import parse
from cds_service.model import ModelCard, RecurrenceModel, load_model_card, parse_model_card
from cds_service.recalibration import (
    Cohort,
    CohortError,
    FitOptions,
    Recalibration,
    SeparationError,
    breslow,
    build_card,
    cohort_from_arrays,
    read_card_json,
    recalibrate,
    simulate_cohort,
    write_card,
)
from fhir_mappings import load_value_sets
from tests.cds_invariants import assert_valid_cds_response
from tests.hook_calls import HookCaller, recent_patient

PUBLISHED, PUBLISHED_JSON = read_card_json(None)
FITTED_AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
#: A site whose patients recur less often than the published cohort (survival 0.90/0.80/0.55 at
#: 3/6/12 months for the reference patient instead of 0.798/0.636/0.281).
LOCAL_KNOTS = [(0, 1.0), (3, 0.90), (6, 0.80), (12, 0.55)]


def local_truth_card() -> ModelCard:
    data = copy.deepcopy(PUBLISHED_JSON)
    data["baseline"]["knots"] = [{"month": m, "survival": s} for m, s in LOCAL_KNOTS]
    return parse_model_card(data)


@pytest.fixture(scope="module")
def local_cohort() -> Cohort:
    """1200 patients drawn (seeded) from the low-recurrence site's true model."""
    return simulate_cohort(local_truth_card(), 1200, seed=21)


@pytest.fixture(scope="module")
def baseline_card(local_cohort: Cohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published card with its baseline refitted on the local cohort, written to a file."""
    rec = recalibrate(local_cohort, PUBLISHED, "baseline")
    path = tmp_path_factory.mktemp("cards") / "local-baseline.json"
    write_card(build_card(rec, PUBLISHED_JSON, fitted_at=FITTED_AT), path)
    return path


def survival_at(card: ModelCard, months: float) -> float:
    return float(np.exp(-RecurrenceModel(card).baseline_cumulative_hazard(months)))


# -- baseline mode ------------------------------------------------------------------------------------


def test_baseline_knots_are_breslow_for_the_reference_patient_at_every_recurrence(
    local_cohort: Cohort,
) -> None:
    rec = recalibrate(local_cohort, PUBLISHED, "baseline", FitOptions(max_knots=10_000))
    months = np.array([m for m, _ in rec.knots])
    survival = np.array([s for _, s in rec.knots])
    assert rec.knots[0] == (0.0, 1.0) and months[-1] == PUBLISHED.horizon_months
    assert np.all(np.diff(months) > 0) and np.all(np.diff(survival) <= 0)
    x = local_cohort.covariates(PUBLISHED)
    t = np.minimum(local_cohort.time_months, 12)
    times, cumhaz = breslow(
        x, t, local_cohort.event, rec.params, at=[PUBLISHED.reference_x1, PUBLISHED.reference_x2]
    )
    np.testing.assert_allclose(months[1:-1], np.round(times, 6))
    np.testing.assert_allclose(survival[1:-1], np.exp(-cumhaz), rtol=1e-11)
    assert survival[-1] == survival[-2]  # flat from the last recurrence to the horizon
    assert rec.params == (-0.619, -2.589) and rec.cox is None


def test_baseline_refit_on_published_patients_gives_back_the_published_baseline() -> None:
    cohort = simulate_cohort(PUBLISHED, 3000, seed=8)
    rec = recalibrate(cohort, PUBLISHED, "baseline")
    card = parse_model_card(build_card(rec, PUBLISHED_JSON, fitted_at=FITTED_AT))
    for month, published in ((3, 0.798), (6, 0.636), (12, 0.281)):
        assert survival_at(card, month) == pytest.approx(published, abs=0.03)


def test_baseline_refit_moves_the_numbers_to_the_local_site(baseline_card: Path) -> None:
    card = load_model_card(baseline_card)
    for month, local in LOCAL_KNOTS[1:]:
        assert survival_at(card, month) == pytest.approx(local, abs=0.04)
    assert (card.operation_time.coefficient, card.hb_grade.coefficient) == (-0.619, -2.589)
    published = RecurrenceModel(PUBLISHED).predict_risk(42, 2, 12)
    assert RecurrenceModel(card).predict_risk(42, 2, 12) < published - 0.15


def test_many_recurrence_times_are_thinned_and_still_pass_through_the_estimate(
    local_cohort: Cohort,
) -> None:
    full = recalibrate(local_cohort, PUBLISHED, "baseline", FitOptions(max_knots=10_000))
    thin = recalibrate(local_cohort, PUBLISHED, "baseline", FitOptions(max_knots=20))
    assert thin.knots_thinned and len(thin.knots) == 22  # month 0 + 20 + horizon
    assert set(thin.knots) <= set(full.knots)
    assert thin.knots[-2] == full.knots[-2]  # the last recurrence is always kept


# -- the card file ------------------------------------------------------------------------------------


def test_the_card_loads_unchanged_and_records_the_fit(
    baseline_card: Path, local_cohort: Cohort
) -> None:
    raw = baseline_card.read_bytes()
    card = load_model_card(baseline_card)
    assert card.sha256 == hashlib.sha256(raw).hexdigest()
    assert card.id == "fei-2022-hfs-rfa-recurrence-local"
    assert card.version == f"{PUBLISHED.version}+local.baseline.20260601"
    fit = card.fit
    assert fit["mode"] == "baseline" and fit["fitted_at"] == "2026-06-01T12:00:00Z"
    assert fit["cohort"]["patients"] == 1200
    assert fit["cohort"]["recurrences"] == int(
        ((local_cohort.event == 1) & (local_cohort.time_months <= 12)).sum()
    )
    assert fit["input"] == {
        "kind": "simulated",
        "location": "n=1200 seed=21",
        "sha256": "",
    }
    assert fit["source_card"] == {
        "id": PUBLISHED.id,
        "version": PUBLISHED.version,
        "sha256": PUBLISHED.sha256,
    }
    data = json.loads(raw)
    assert data["baseline"]["method"] == "breslow-local"
    assert data["assumptions"][0].startswith("Recalibrated on 1200 local patients")
    assert not any(
        a.startswith("The baseline hazard was not published") for a in data["assumptions"]
    )
    assert "Recalibrate on local patients before clinical use." not in data["limitations"]
    # Everything the fit did not touch is the source card's.
    for key in (
        "covariates",
        "reference_patient",
        "scenarios",
        "tiers",
        "citation",
        "horizon_months",
    ):
        assert data[key] == PUBLISHED_JSON[key]


def test_texts_the_refit_rewrote_read_english_in_every_language_never_the_old_translation(
    baseline_card: Path,
) -> None:
    """The caveat, assumptions and limitations change with a refit; the published card's Chinese
    versions would describe the published fit, so the local card shows the English ones there and
    names them as untranslated; the texts the refit left alone keep their translation."""
    card = load_model_card(baseline_card)
    english, chinese = card.texts(parse("en")), card.texts(parse("zh-Hans"))
    assert chinese.caveat == english.caveat and english.caveat.startswith("Recalibrated on")
    assert chinese.assumptions == english.assumptions
    assert chinese.limitations == english.limitations
    assert {"caveat", "assumptions", "limitations"} <= set(card.untranslated[parse("zh-Hans")])
    assert chinese.title != english.title  # still translated


def test_full_refit_writes_estimates_standard_errors_and_the_lr_test(
    local_cohort: Cohort, tmp_path: Path
) -> None:
    rec = recalibrate(local_cohort, PUBLISHED, "full")
    assert rec.cox is not None
    card = write_card(build_card(rec, PUBLISHED_JSON, fitted_at=FITTED_AT), tmp_path / "full.json")
    assert card.operation_time.coefficient == pytest.approx(rec.cox.params_[0], rel=1e-9)
    assert card.hb_grade.coefficient == pytest.approx(rec.cox.params_[1], rel=1e-9)
    fit = card.fit
    hb = fit["coefficients"]["hb_grade"]
    assert hb["se"] == pytest.approx(rec.cox.standard_errors_[1], rel=1e-9)
    assert hb["ci95"][0] < hb["estimate"] < hb["ci95"][1]
    assert hb["source_card_coefficient"] == -2.589
    assert fit["lr_test"]["df"] == 2 and fit["lr_test"]["statistic"] > 100
    assert fit["ties"] == "efron" and len(fit["covariance"]) == 2
    # The local truth keeps the published coefficients: the refit finds them within 3 SE.
    truth = np.array([-0.619, -2.589])
    assert np.all(np.abs(rec.cox.params_ - truth) < 3 * rec.cox.standard_errors_)


def test_no_patient_identifier_reaches_the_card(tmp_path: Path) -> None:
    cohort = simulate_cohort(PUBLISHED, 60, seed=4)
    rows = tuple(dataclasses.replace(r, patient=f"secret-{i}") for i, r in enumerate(cohort.rows))
    named = Cohort(rows, (), "csv", "cohort.csv", "abc")
    rec = recalibrate(named, PUBLISHED, "baseline")
    text = json.dumps(build_card(rec, PUBLISHED_JSON))
    assert "secret-" not in text


# -- the service uses the card -----------------------------------------------------------------------


@pytest.fixture
def local_app(baseline_card: Path) -> Iterator[Flask]:
    """The service configured with the recalibrated card (as CDS_MODEL_CARD would)."""
    app = create_app({"TESTING": True, "AUTH_REQUIRED": False, "MODEL_CARD": str(baseline_card)})
    yield app
    app.extensions["hfs_cds"].fhir_client.close()


def test_the_service_scores_with_the_recalibrated_card(
    local_app: Flask, baseline_card: Path
) -> None:
    card = load_model_card(baseline_card)
    response = HookCaller(local_app.test_client()).call("patient-view", recent_patient())
    (cds_card,) = assert_valid_cds_response(response.get_json())
    ext = cds_card["extension"]["org.example.hfs-cds.assessment"]
    assert ext["model"] == {"id": card.id, "version": card.version, "sha256": card.sha256}
    expected = RecurrenceModel(card).predict_risk(42, 2, [3, 6, 12])
    assert [r["risk"] for r in ext["risks"]] == [round(float(v), 4) for v in expected]
    assert f"{expected[-1] * 100:.0f}% by 12 months" in cds_card["summary"]
    published_12 = RecurrenceModel(PUBLISHED).predict_risk(42, 2, 12)
    assert f"{published_12 * 100:.0f}% by 12 months" not in cds_card["summary"]


def test_the_assessor_gives_the_new_numbers(baseline_card: Path) -> None:
    card = load_model_card(baseline_card)
    now = datetime.now(UTC)
    new = Assessor(card, load_value_sets()).assess(recent_patient(), "p1", as_of=now)
    old = Assessor(PUBLISHED, load_value_sets()).assess(recent_patient(), "p1", as_of=now)
    assert new.status is old.status is Status.SCORED
    expected = RecurrenceModel(card).predict_risk(42, 2, 12)
    assert new.risk_at(12).risk == pytest.approx(float(expected))
    assert new.risk_at(12).risk < old.risk_at(12).risk - 0.15


# -- degenerate cohorts ---------------------------------------------------------------------------------


def _cohort(**columns: Any) -> Cohort:
    """A cohort from explicit columns; the others default (35 min, HB 1-3, 1-12 months, 1/0)."""
    n = len(next(iter(columns.values())))
    return cohort_from_arrays(
        columns.get("operation_minutes", np.full(n, 35.0)),
        columns.get("hb_grade", np.tile([1, 2, 3], n)[:n]),
        columns.get("time_months", np.linspace(1, 12, n)),
        columns.get("event", np.tile([1, 0], n)[:n]),
    )


def test_too_few_patients() -> None:
    with pytest.raises(
        CohortError, match="5 patient\\(s\\) in the cohort are too few .*at least 20"
    ):
        recalibrate(_cohort(event=[1, 1, 0, 1, 0]), PUBLISHED, "baseline")


def test_all_censored() -> None:
    with pytest.raises(CohortError, match="no recurrences within 12 months among 30 patients"):
        recalibrate(_cohort(event=np.zeros(30)), PUBLISHED, "baseline")


def test_recurrences_only_after_the_horizon_count_as_none() -> None:
    with pytest.raises(CohortError, match="no recurrences within 12 months"):
        recalibrate(_cohort(time_months=np.full(30, 14.0)), PUBLISHED, "baseline")


def test_too_few_recurrences() -> None:
    events = np.zeros(30)
    events[:3] = 1
    with pytest.raises(CohortError, match="3 recurrence\\(s\\) within 12 months are too few"):
        recalibrate(_cohort(event=events), PUBLISHED, "baseline")


def test_full_refit_needs_ten_recurrences_per_coefficient() -> None:
    events = np.zeros(40)
    events[:12] = 1
    with pytest.raises(CohortError, match="12 recurrences are too few to refit 2 coefficients"):
        recalibrate(
            _cohort(event=events, operation_minutes=np.tile([25.0, 40.0], 20)), PUBLISHED, "full"
        )


def test_a_constant_covariate_fails_the_full_refit_but_not_the_baseline() -> None:
    cohort = _cohort(hb_grade=np.full(60, 2), operation_minutes=np.tile([25.0, 40.0], 30))
    with pytest.raises(
        CohortError,
        match="House-Brackmann grade \\(X2\\) takes the same value for every patient.*--mode baseline",
    ):
        recalibrate(cohort, PUBLISHED, "full")
    assert recalibrate(cohort, PUBLISHED, "baseline").events == 30


def test_perfect_separation_fails_the_full_refit() -> None:
    minutes = np.tile([25.0, 40.0], 30)  # X1 = 0, 1, 0, 1, ...
    events = (minutes < 30).astype(float)  # every recurrence after a short operation
    with pytest.raises(SeparationError, match="operation time over the cut \\(X1\\)"):
        recalibrate(_cohort(operation_minutes=minutes, event=events), PUBLISHED, "full")


def test_follow_up_short_of_the_horizon_fails_unless_allowed(tmp_path: Path) -> None:
    cohort = _cohort(time_months=np.linspace(0.5, 9.0, 60), event=np.tile([1, 0, 0], 20))
    with pytest.raises(CohortError, match="local follow-up ends at 9.00 months.*--allow-short"):
        recalibrate(cohort, PUBLISHED, "baseline")
    rec: Recalibration = recalibrate(
        cohort, PUBLISHED, "baseline", FitOptions(allow_short_follow_up=True)
    )
    assert rec.extrapolated_after_months == 9.0 and rec.warnings
    months = [m for m, _ in rec.knots]
    assert months[-2:] == [9.0, 12.0] and rec.knots[-1][1] < rec.knots[-2][1]
    card = write_card(build_card(rec, PUBLISHED_JSON), tmp_path / "short.json")
    assert card.fit["baseline"]["extrapolated_after_months"] == 9.0
    assert any("Local follow-up ends at 9.0 months" in a for a in card.assumptions)
    basis = json.loads((tmp_path / "short.json").read_text())["baseline"]["basis"]
    assert "extended to 12 months at the average hazard of the second half of follow-up" in basis
