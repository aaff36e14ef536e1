"""The Cox engine reproduces the pinned numbers of clinical-model.md §3 and behaves as a model must."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cds_service.model import RecurrenceModel, Scenario

MONTHS = [3, 6, 12]


def test_reference_patient_reproduces_published_kaplan_meier(model: RecurrenceModel) -> None:
    # The reference patient (X1 = 0.5, HB II) has lp = lp_ref, so its risk is 1 - S_ref(t).
    baseline_risk = -np.expm1(-model.baseline_cumulative_hazard(MONTHS))
    assert np.round(baseline_risk * 100, 1).tolist() == [20.2, 36.4, 71.9]


def test_hb2_over_30_minutes_matches_pinned_values(model: RecurrenceModel) -> None:
    risk = model.predict_risk(42, 2, MONTHS)
    assert np.round(risk * 100, 1).tolist() == [15.3, 28.3, 60.6]


def test_reference_linear_predictor_is_minus_5_4875(model: RecurrenceModel) -> None:
    card = model.card
    lp_ref = (
        card.operation_time.coefficient * card.reference_x1
        + card.hb_grade.coefficient * card.reference_x2
    )
    assert lp_ref == pytest.approx(-5.4875)


def test_only_the_cut_matters_in_the_published_coding(model: RecurrenceModel) -> None:
    assert np.array_equal(model.predict_risk(31, 2, MONTHS), model.predict_risk(179, 2, MONTHS))
    assert np.array_equal(model.predict_risk(30, 2, MONTHS), model.predict_risk(6, 2, MONTHS))
    assert (model.predict_risk(30, 2, MONTHS) > model.predict_risk(31, 2, MONTHS)).all()


def test_longer_operation_and_higher_grade_lower_the_risk(model: RecurrenceModel) -> None:
    risks = model.predict_risk([20, 40, 40, 40], [2, 1, 2, 3], [12])[:, 0]
    short_hb2, long_hb1, long_hb2, long_hb3 = risks
    assert short_hb2 > long_hb2
    assert long_hb1 > long_hb2 > long_hb3


def test_risk_rises_with_time_and_interpolates_between_knots(model: RecurrenceModel) -> None:
    months = np.linspace(0.1, 12, 120)
    risk = model.predict_risk(42, 2, months)
    assert (np.diff(risk) > 0).all()
    # Linear cumulative hazard: halfway between knots the hazard is the mean of the two.
    h = model.baseline_cumulative_hazard([3, 4.5, 6])
    assert h[1] == pytest.approx((h[0] + h[2]) / 2)


def test_output_shape_is_patients_then_months(model: RecurrenceModel) -> None:
    assert model.predict_risk(42, 2, 12).shape == ()
    assert model.predict_risk(42, 2, [12]).shape == (1,)
    assert model.predict_risk([42, 25], [2, 2], 12).shape == (2,)
    assert model.predict_risk([42, 25], [2, 2], [3, 12]).shape == (2, 2)
    assert model.predict_risk([42, 25], [2, 2], [3, 12], conditional_after=1).shape == (2, 2)


def test_vectorised_scoring_equals_one_by_one(model: RecurrenceModel) -> None:
    rng = np.random.default_rng(7)
    minutes = rng.uniform(5, 180, 1000)
    grades = rng.integers(1, 4, 1000)
    batch = model.predict_risk(minutes, grades, MONTHS)
    assert batch.shape == (1000, 3)
    for i in (0, 17, 999):
        assert np.array_equal(batch[i], model.predict_risk(minutes[i], grades[i], MONTHS))


def test_a_million_patients_in_one_call(model: RecurrenceModel) -> None:
    n = 1_000_000
    risk = model.predict_risk(np.full(n, 42.0), np.full(n, 2), [12])
    assert risk.shape == (n, 1)
    assert np.all(risk == risk[0])


def test_conditional_risk_is_one_minus_survival_ratio(model: RecurrenceModel) -> None:
    s_6 = 1 - model.predict_risk(42, 2, 6)
    s_12 = 1 - model.predict_risk(42, 2, 12)
    conditional = model.predict_risk(42, 2, 12, conditional_after=6)
    assert conditional == pytest.approx(1 - s_12 / s_6)
    # Surviving recurrence-free to 6 months lowers the 12-month risk.
    assert conditional < model.predict_risk(42, 2, 12)


def test_conditional_after_per_patient(model: RecurrenceModel) -> None:
    risk = model.predict_risk([42, 42], [2, 2], [12], conditional_after=[0, 6])
    assert risk[0, 0] == pytest.approx(model.predict_risk(42, 2, 12))
    assert risk[1, 0] == pytest.approx(model.predict_risk(42, 2, 12, conditional_after=6))


@pytest.mark.parametrize(
    ("minutes", "grade", "months", "conditional_after"),
    [
        (42, 4, 12, None),  # HB IV is outside the derivation range
        (42, 0, 12, None),
        (42, 2.5, 12, None),
        (0, 2, 12, None),
        (float("nan"), 2, 12, None),
        (42, 2, 13, None),  # nothing past the 12-month horizon
        (42, 2, 0, None),
        (42, 2, 6, 6),  # conditional needs s < t
        (42, 2, 6, -1),
    ],
)
def test_out_of_domain_inputs_raise_value_error(
    model: RecurrenceModel,
    minutes: float,
    grade: float,
    months: float,
    conditional_after: float | None,
) -> None:
    with pytest.raises(ValueError):
        model.predict_risk(minutes, grade, months, conditional_after=conditional_after)


def test_scenario_range_brackets_the_point_estimate(model: RecurrenceModel) -> None:
    for minutes in (12, 30, 31, 42, 90):
        for grade in (1, 2, 3):
            point = model.predict_risk(minutes, grade, MONTHS)
            low, high = model.scenario_range(minutes, grade, MONTHS)
            assert (low <= point + 1e-12).all() and (point <= high + 1e-12).all()


def test_eight_scenarios_from_the_card(model: RecurrenceModel) -> None:
    assert len(model.scenarios) == 8
    assert model.point_scenario in model.scenarios
    assert Scenario("per_10_minutes", "binary", 1.8) in model.scenarios


def test_binary_hb_coding_caps_the_grade_at_two(model: RecurrenceModel) -> None:
    binary = Scenario("binary", "binary", 2.0)
    assert model.predict_risk(42, 3, 12, scenario=binary) == pytest.approx(
        model.predict_risk(42, 2, 12)
    )


def test_per_10_minute_coding_uses_the_reference_time(model: RecurrenceModel) -> None:
    per10 = Scenario("per_10_minutes", "ordinal", 2.0)
    assert model.relative_log_hazard(33, 2, per10) == pytest.approx(0.0)
    assert model.relative_log_hazard(43, 2, per10) == pytest.approx(-0.619)


@pytest.mark.parametrize(
    ("risk", "tier"),
    [
        (0.0, "low"),
        (0.2999, "low"),
        (0.30, "intermediate"),
        (0.6999, "intermediate"),
        (0.70, "high"),
        (1.0, "high"),
    ],
)
def test_tier_thresholds(model: RecurrenceModel, risk: float, tier: str) -> None:
    assert model.tier(risk).id == tier


GOLDEN = {
    # (minutes, grade): (3 m, 6 m, 12 m, low 12 m, high 12 m), percent to one decimal
    (42, 2): (15.3, 28.3, 60.6, 35.2, 60.6),
    (25, 2): (26.5, 46.0, 82.3, 64.3, 87.5),
    (42, 3): (1.2, 2.5, 6.8, 3.2, 60.6),
    (42, 1): (89.0, 98.8, 100.0, 99.7, 100.0),
    (25, 3): (2.3, 4.5, 12.2, 7.4, 87.5),
}


def test_golden_table(model: RecurrenceModel) -> None:
    """A frozen table of inputs -> risks (point and range at 12 months), checked on every run.

    The values were computed independently (plain-Python formula of clinical-model.md §3, not this
    engine); the first row is the pinned example of the specification.
    """
    for (minutes, grade), expected in GOLDEN.items():
        point = model.predict_risk(minutes, grade, MONTHS)
        low, high = model.scenario_range(minutes, grade, [12])
        got = tuple(np.round(np.concatenate([point, low, high]) * 100, 1).tolist())
        assert got == expected, (minutes, grade)


def test_risk_with_range_equals_the_separate_calls(model: RecurrenceModel) -> None:
    point, low, high = model.risk_with_range([25, 42], [2, 3], MONTHS, conditional_after=[1, 2])
    assert np.allclose(
        point, model.predict_risk([25, 42], [2, 3], MONTHS, conditional_after=[1, 2])
    )
    lo, hi = model.scenario_range([25, 42], [2, 3], MONTHS, conditional_after=[1, 2])
    assert np.allclose(low, lo) and np.allclose(high, hi)


@pytest.mark.parametrize(("minutes", "grade"), GOLDEN)
def test_one_patient_path_reproduces_the_golden_table(
    model: RecurrenceModel, minutes: int, grade: int
) -> None:
    # patient_risks, the hook's plain-float path, against the same frozen table as the arrays.
    point, low, high = model.patient_risks(minutes, grade, MONTHS)
    got = tuple(round(r * 100, 1) for r in (*point, low[-1], high[-1]))
    assert got == GOLDEN[(minutes, grade)]


def test_one_patient_path_reproduces_the_pinned_values(model: RecurrenceModel) -> None:
    # clinical-model.md section 3: the reference patient's risk is 1 - S_ref(t) ...
    baseline = [-math.expm1(-model._cumhaz_at(t)) for t in MONTHS]
    assert [round(r * 100, 1) for r in baseline] == [20.2, 36.4, 71.9]
    # ... HB II over 30 minutes, with H_ref linear between the knots (4.5 months: the mean of
    # -ln 0.798 and -ln 0.636) and, still recurrence-free at 6 months, 1 - S(12|x) / S(6|x), all
    # from the spec's numbers in plain Python.
    point, _, _ = model.patient_risks(42, 2, [3, 4.5, 6, 12], conditional_from=6)
    assert [round(r * 100, 2) for r in point] == [15.26, 22.03, 28.26, 60.60, 45.09]


@pytest.mark.parametrize(
    ("minutes", "grade", "months", "since"),
    [
        ([25, 42], 2, MONTHS, None),  # several patients
        (42, 2, [], None),
        (42, 2, [0, 12], None),
        (42, 2, MONTHS, 12.0),  # not before the last month
        (42, 2, MONTHS, -1.0),
        (0, 2, MONTHS, None),
        (42, 7, MONTHS, None),
    ],
)
def test_patient_risks_refuses_what_it_cannot_score(
    model: RecurrenceModel, minutes: object, grade: int, months: list[float], since: float | None
) -> None:
    with pytest.raises(ValueError):
        model.patient_risks(minutes, grade, months, since)  # type: ignore[arg-type]


class _PlainFloats:
    """The numpy functions the engine's formula uses, on plain floats (the reference evaluation)."""

    exp = staticmethod(math.exp)
    expm1 = staticmethod(math.expm1)
    minimum = staticmethod(min)
    where = staticmethod(lambda condition, if_true, if_false: if_true if condition else if_false)


@pytest.mark.parametrize("since", [None, 0.0, 0.5, 3.3, 11.0])
@pytest.mark.parametrize("grade", [1, 2, 3])
@pytest.mark.parametrize("minutes", [5.0, 20.0, 30.0, 30.5, 33.0, 42.0, 179.9])
def test_one_patient_path_is_the_engine_formula_to_the_last_bit(
    model: RecurrenceModel, minutes: float, grade: int, since: float | None
) -> None:
    # patient_risks shares work across codings and months for speed (issue 12): its numbers must
    # stay exactly those of the one definition evaluated coding by coding, month by month.
    from cds_service.model import engine

    months = [1.0, 3.0, 4.5, 6.0, 12.0]
    cumhaz = [model._cumhaz_at(t) for t in months]
    if since is not None:
        cumhaz.append(cumhaz[-1] - model._cumhaz_at(since))
    rows = []
    for coding in model._codings:
        lp = engine._relative_log_hazard(_PlainFloats, model.card, minutes, float(grade), coding)
        rows.append([engine._absolute_risk(_PlainFloats, lp, h) for h in cumhaz])
    scenarios = list(zip(*rows[1:], strict=True))
    point, low, high = model.patient_risks(minutes, grade, months, since)
    assert point == rows[0]
    assert low == [min(column) for column in scenarios]
    assert high == [max(column) for column in scenarios]
