"""Rule 6: the first accepted House-Brackmann grade 0-72 h after the ablation (else up to 7 days),
in either value form; everything else is a precise Problem."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mappings import (
    HouseBrackmannGrade,
    MappingParameters,
    Problem,
    Reason,
    map_patient,
)
from tests.fhir_builders import (
    HB_SNOMED_CODING,
    HB_SYSTEM,
    PROJECT,
    SNOMED,
    Resource,
    ablation_procedure,
    codeable,
    hb_observation,
)

# The default ablation ends 2026-05-01T09:42:00+08:00.


def grade_of(
    *observations: Resource, params: MappingParameters | None = None
) -> HouseBrackmannGrade | Problem:
    inputs = map_patient([ablation_procedure(), *observations], "p1", params)
    assert inputs.hb_grade is not None
    return inputs.hb_grade


@pytest.mark.parametrize(
    ("grade", "expected"), [("I", 1), ("II", 2), ("III", 3), (1, 1), (2, 2), (3, 3)]
)
def test_both_value_forms_give_the_grade(grade: str | int, expected: int) -> None:
    result = grade_of(hb_observation(grade=grade))
    assert isinstance(result, HouseBrackmannGrade)
    assert result.grade == expected
    assert result.hours_after_procedure == pytest.approx(5.3)
    assert result.within_primary_window
    assert result.provenance.reference == "Observation/hb1/_history/1"
    assert result.provenance.recorded == "2026-05-01T15:00:00+08:00"


def test_integral_json_float_counts_as_an_integer() -> None:
    result = grade_of(hb_observation(grade=None, valueInteger=2.0))
    assert isinstance(result, HouseBrackmannGrade) and result.grade == 2


def test_snomed_seventh_nerve_function_code_is_accepted() -> None:
    result = grade_of(hb_observation(coding=HB_SNOMED_CODING))
    assert isinstance(result, HouseBrackmannGrade) and result.grade == 2


@pytest.mark.parametrize("status", ["final", "amended", "corrected"])
def test_accepted_statuses(status: str) -> None:
    assert isinstance(grade_of(hb_observation(status=status)), HouseBrackmannGrade)


@pytest.mark.parametrize(
    ("extra", "expected_hours"),
    [
        (
            {"effectiveDateTime": None, "effectivePeriod": {"start": "2026-05-01T12:42:00+08:00"}},
            3.0,
        ),
        ({"effectiveDateTime": None, "effectiveInstant": "2026-05-01T04:42:00Z"}, 3.0),
        ({"effectiveDateTime": None, "issued": "2026-05-01T10:42:00.000+08:00"}, 1.0),
        ({"effectiveDateTime": "not a date", "issued": "2026-05-01T10:42:00+08:00"}, 1.0),
    ],
)
def test_effective_time_sources(extra: dict[str, Any], expected_hours: float) -> None:
    result = grade_of(hb_observation(**extra))
    assert isinstance(result, HouseBrackmannGrade)
    assert result.hours_after_procedure == pytest.approx(expected_hours)


def test_the_first_grade_in_the_primary_window_wins_whatever_the_order() -> None:
    later = hb_observation(id="hb-later", grade="I", effective="2026-05-02T09:00:00+08:00")
    first = hb_observation(id="hb-first", grade="III", effective="2026-05-01T11:00:00+08:00")
    fallback = hb_observation(id="hb-day5", grade="II", effective="2026-05-06T09:00:00+08:00")
    for order in ([later, first, fallback], [fallback, later, first]):
        result = grade_of(*order)
        assert isinstance(result, HouseBrackmannGrade)
        assert (result.grade, result.provenance.id) == (3, "hb-first")


def test_fallback_window_is_used_only_without_a_primary_grade() -> None:
    result = grade_of(
        hb_observation(id="before", effective="2026-05-01T08:00:00+08:00"),
        hb_observation(id="day5", grade="I", effective="2026-05-06T09:42:00+08:00"),
        hb_observation(id="day6", grade="III", effective="2026-05-07T09:42:00+08:00"),
    )
    assert isinstance(result, HouseBrackmannGrade)
    assert (result.grade, result.provenance.id) == (1, "day5")
    assert not result.within_primary_window
    assert result.hours_after_procedure == pytest.approx(120)


@pytest.mark.parametrize(
    ("effective", "primary"),
    [
        ("2026-05-01T09:42:00+08:00", True),  # at the end of the procedure
        ("2026-05-04T09:42:00+08:00", True),  # exactly 72 h
        ("2026-05-04T09:43:00+08:00", False),  # just after 72 h
        ("2026-05-08T09:42:00+08:00", False),  # exactly 7 days
    ],
)
def test_window_bounds_are_inclusive(effective: str, primary: bool) -> None:
    result = grade_of(hb_observation(effective=effective))
    assert isinstance(result, HouseBrackmannGrade) and result.within_primary_window is primary


def test_date_only_effective_counts_when_its_day_overlaps_the_window() -> None:
    same_day = grade_of(hb_observation(effective="2026-05-01"))
    assert isinstance(same_day, HouseBrackmannGrade) and same_day.within_primary_window
    assert same_day.hours_after_procedure == 0
    day_four = grade_of(hb_observation(effective="2026-05-04"))  # overlaps 72 h (09:42 that day)
    assert isinstance(day_four, HouseBrackmannGrade) and day_four.within_primary_window
    day_six = grade_of(hb_observation(effective="2026-05-06"))
    assert isinstance(day_six, HouseBrackmannGrade) and not day_six.within_primary_window


def test_windows_come_from_the_parameters() -> None:
    params = MappingParameters(hb_primary_window_hours=2, hb_fallback_window_hours=4)
    result = grade_of(hb_observation(), params=params)  # 5.3 h after
    assert isinstance(result, Problem) and result.reason is Reason.NO_HB_IN_WINDOW
    assert "0–2 h (or up to 4 h)" in result.message


def test_no_grade_at_all() -> None:
    result = grade_of()
    assert isinstance(result, Problem) and result.reason is Reason.NO_HB_IN_WINDOW
    assert "Procedure/rfa1 ended (2026-05-01T09:42:00+08:00)" in result.message
    assert "0–72 h after the procedure" in result.action
    assert f"{PROJECT}|hb-grade-post-rfa" in result.action
    assert HB_SYSTEM in result.action


def test_grades_outside_the_window_are_mentioned() -> None:
    result = grade_of(
        hb_observation(id="baseline", grade="I", effective="2026-04-30T10:00:00+08:00"),
        hb_observation(id="late", effective="2026-05-11T09:42:00+08:00"),
    )
    assert isinstance(result, Problem) and result.reason is Reason.NO_HB_IN_WINDOW
    assert "Observation/baseline (before the procedure ended)" in result.message
    assert "Observation/late (10 days after)" in result.message


@pytest.mark.parametrize("status", ["preliminary", "registered"])
def test_only_preliminary_grades_in_the_window(status: str) -> None:
    result = grade_of(
        hb_observation(id="p", status=status),
        hb_observation(id="old", effective="2026-04-01T10:00:00+08:00"),
    )
    assert isinstance(result, Problem) and result.reason is Reason.HB_PRELIMINARY_ONLY
    assert f"Observation/p (status '{status}', 2026-05-01T15:00:00+08:00)" in result.message
    assert "final" in result.action


def test_a_final_grade_beats_an_earlier_preliminary_one() -> None:
    result = grade_of(
        hb_observation(id="p", status="preliminary", effective="2026-05-01T10:00:00+08:00"),
        hb_observation(id="f", grade="I"),
    )
    assert isinstance(result, HouseBrackmannGrade) and result.provenance.id == "f"


@pytest.mark.parametrize(
    ("extra", "note"),
    [
        ({"status": "cancelled"}, "Observation/hb1: House-Brackmann grade with status 'cancelled'"),
        ({"status": "entered-in-error"}, "status 'entered-in-error'"),
        ({"status": "unknown"}, "status 'unknown'"),
        ({"dataAbsentReason": codeable(("x", "asked-unknown", "d"))}, "with a dataAbsentReason"),
        ({"effectiveDateTime": None, "issued": None}, "without a usable date"),
    ],
)
def test_unaccepted_grades_are_set_aside(extra: dict[str, Any], note: str) -> None:
    inputs = map_patient([ablation_procedure(), hb_observation(**extra)], "p1")
    assert isinstance(inputs.hb_grade, Problem) and inputs.hb_grade.reason is Reason.NO_HB_IN_WINDOW
    assert any(note in n for n in inputs.ignored)


@pytest.mark.parametrize(
    ("value", "described"),
    [
        ({"valueString": "House-Brackmann II, mild weakness"}, "value type 'valueString'"),
        ({"valueQuantity": {"value": 2}}, "value type 'valueQuantity'"),
        ({"valueInteger": 7}, "valueInteger 7, outside 1–6"),
        ({"valueInteger": 0}, "valueInteger 0, outside 1–6"),
        ({"valueInteger": "2"}, "a valueInteger that is not an integer"),
        ({"valueInteger": True}, "a valueInteger that is not an integer"),
        ({"valueCodeableConcept": codeable((HB_SYSTEM, "VII", "d"))}, "code 'VII', which is not"),
        (
            {"valueCodeableConcept": codeable((SNOMED, "II", "d"))},
            f"without a coding from {HB_SYSTEM}",
        ),
        ({}, "no value"),
    ],
)
def test_unsupported_values(value: dict[str, Any], described: str) -> None:
    result = grade_of(hb_observation(grade=None, **value))
    assert isinstance(result, Problem) and result.reason is Reason.HB_UNSUPPORTED_VALUE
    assert described in result.message
    assert "valueCodeableConcept with a code I–VI" in result.message
    assert "valueInteger 1–6" in result.message
    assert "mild weakness" not in result.message
    assert result.provenance is not None and result.provenance.id == "hb1"


def test_the_chosen_observation_decides_even_if_a_later_one_is_valid() -> None:
    result = grade_of(
        hb_observation(
            id="first", grade=None, valueString="II", effective="2026-05-01T10:00:00+08:00"
        ),
        hb_observation(id="second", grade="II"),
    )
    assert isinstance(result, Problem) and result.reason is Reason.HB_UNSUPPORTED_VALUE
    assert "Observation/first" in result.message


@pytest.mark.parametrize(("grade", "roman"), [("IV", "IV"), (5, "V"), ("VI", "VI")])
def test_grades_above_the_model_range(grade: str | int, roman: str) -> None:
    result = grade_of(hb_observation(grade=grade))
    assert isinstance(result, Problem) and result.reason is Reason.HB_OUTSIDE_MODEL
    assert f" is {roman} (Observation/hb1" in result.message
    assert "derived on grades I–III" in result.message
    assert "eye" in result.action and "early review" in result.action


def test_model_range_comes_from_the_parameters() -> None:
    result = grade_of(hb_observation(grade="III"), params=MappingParameters(max_model_hb_grade=2))
    assert isinstance(result, Problem) and "grades I–II" in result.message


def test_date_only_ablation_is_read_in_the_zone_of_the_grade() -> None:
    inputs = map_patient(
        [
            ablation_procedure(start="2026-05-01", end="2026-05-01"),
            hb_observation(effective="2026-05-01T07:00:00+08:00"),  # 30 April in UTC
        ],
        "p1",
    )
    assert isinstance(inputs.hb_grade, HouseBrackmannGrade)
    assert inputs.hb_grade.hours_after_procedure == 0 and inputs.hb_grade.within_primary_window
