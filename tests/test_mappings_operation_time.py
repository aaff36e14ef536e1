"""Rule 5: operation time from performedPeriod, else from a duration Observation partOf the
procedure; impossible or implausible durations are data errors."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mappings import (
    MappingParameters,
    OperationTime,
    PatientInputs,
    Problem,
    Reason,
    map_patient,
)
from tests.fhir_builders import PROJECT, UCUM, Resource, ablation_procedure, duration_observation


def date_only_ablation(**extra: Any) -> Resource:
    """The default ablation recorded with dates only (no times of day)."""
    return ablation_procedure(start="2026-05-01", end="2026-05-01", **extra)


def operation(
    *resources: Resource, params: MappingParameters | None = None
) -> OperationTime | Problem:
    inputs: PatientInputs = map_patient(list(resources), "p1", params)
    assert inputs.operation_time is not None
    return inputs.operation_time


def test_minutes_from_performed_period() -> None:
    result = operation(ablation_procedure(version="2"))
    assert isinstance(result, OperationTime)
    assert result.minutes == 42
    assert result.source == "performedPeriod"
    assert result.provenance.reference == "Procedure/rfa1/_history/2"
    assert result.provenance.recorded == "2026-05-01T09:00:00+08:00/2026-05-01T09:42:00+08:00"


def test_seconds_and_mixed_offsets_count() -> None:
    result = operation(
        ablation_procedure(start="2026-05-01T01:00:00Z", end="2026-05-01T09:42:30.000+08:00")
    )
    assert isinstance(result, OperationTime) and result.minutes == pytest.approx(42.5)


def test_the_period_wins_over_a_duration_observation() -> None:
    result = operation(ablation_procedure(), duration_observation(value=99))
    assert isinstance(result, OperationTime) and result.source == "performedPeriod"


@pytest.mark.parametrize(
    "end", ["2026-05-01T09:00:00+08:00", "2026-05-01T08:59:00+08:00", "2026-05-01T01:00:00Z"]
)
def test_end_at_or_before_start_is_invalid(end: str) -> None:
    result = operation(ablation_procedure(end=end))
    assert isinstance(result, Problem) and result.reason is Reason.DURATION_INVALID
    assert "Procedure/rfa1 performedPeriod ends" in result.message
    assert "at or before it starts (2026-05-01T09:00:00+08:00)" in result.message


@pytest.mark.parametrize(
    ("end", "minutes"), [("2026-05-01T09:03:00+08:00", "3"), ("2026-05-01T12:01:00+08:00", "181")]
)
def test_implausible_durations_are_out_of_range(end: str, minutes: str) -> None:
    result = operation(ablation_procedure(end=end))
    assert isinstance(result, Problem) and result.reason is Reason.DURATION_OUT_OF_RANGE
    assert f"{minutes} minutes" in result.message
    assert "5–180 minutes" in result.message and "treated as a data error" in result.message
    assert "Procedure/rfa1" in result.action


@pytest.mark.parametrize(("end", "minutes"), [("09:05", 5), ("12:00", 180)])
def test_range_bounds_are_inclusive(end: str, minutes: int) -> None:
    result = operation(ablation_procedure(end=f"2026-05-01T{end}:00+08:00"))
    assert isinstance(result, OperationTime) and result.minutes == minutes


def test_range_comes_from_the_parameters() -> None:
    params = MappingParameters(min_operation_minutes=45, max_operation_minutes=60)
    result = operation(ablation_procedure(), params=params)
    assert isinstance(result, Problem) and "45–60 minutes" in result.message


@pytest.mark.parametrize(
    ("value", "unit", "minutes"), [(42, "min", 42.0), (1.5, "h", 90.0), (2520, "s", 42.0)]
)
def test_duration_observation_when_the_period_has_no_times(
    value: float, unit: str, minutes: float
) -> None:
    result = operation(date_only_ablation(), duration_observation(value=value, unit=unit))
    assert isinstance(result, OperationTime)
    assert result.minutes == pytest.approx(minutes)
    assert result.source == "duration-observation"
    assert result.provenance.reference == "Observation/dur1/_history/1"
    assert result.provenance.recorded == "2026-05-01T09:42:00+08:00"


def test_duration_observation_when_only_performed_date_time_is_recorded() -> None:
    result = operation(
        ablation_procedure(start=None, end=None, performed="2026-05-01T09:42:00+08:00"),
        duration_observation(),
    )
    assert isinstance(result, OperationTime) and result.source == "duration-observation"


def test_duration_observation_when_only_one_end_has_a_time() -> None:
    result = operation(ablation_procedure(end="2026-05-01"), duration_observation())
    assert isinstance(result, OperationTime) and result.source == "duration-observation"


@pytest.mark.parametrize(
    "part_of",
    [
        "Procedure/rfa1/_history/1",
        "https://ehr.example.org/fhir/Procedure/rfa1",
        "https://ehr.example.org/fhir/Procedure/rfa1/_history/4",
    ],
)
def test_part_of_may_be_versioned_or_absolute(part_of: str) -> None:
    obs = duration_observation(partOf=[{"reference": "Procedure/other"}, {"reference": part_of}])
    result = operation(date_only_ablation(), obs)
    assert isinstance(result, OperationTime)


@pytest.mark.parametrize(
    ("extra", "note"),
    [
        (
            {"procedure": "rfa-other"},
            "Observation/dur1: operation duration not partOf Procedure/rfa1",
        ),
        ({"procedure": None}, "Observation/dur1: operation duration not partOf Procedure/rfa1"),
        ({"partOf": {"reference": "Procedure/rfa1"}}, "not partOf"),  # not a list: malformed
        (
            {"status": "preliminary"},
            "Observation/dur1: operation duration with status 'preliminary'",
        ),
        ({"dataAbsentReason": {"text": "not measured"}}, "with a dataAbsentReason"),
    ],
)
def test_unusable_duration_observations_are_set_aside(extra: dict[str, Any], note: str) -> None:
    inputs = map_patient([date_only_ablation(), duration_observation(**extra)], "p1")
    assert isinstance(inputs.operation_time, Problem)
    assert inputs.operation_time.reason is Reason.PERIOD_WITHOUT_TIMES
    assert any(note in n for n in inputs.ignored)


def test_period_without_times_says_what_is_recorded_and_how_to_fix_it() -> None:
    result = operation(date_only_ablation())
    assert isinstance(result, Problem) and result.reason is Reason.PERIOD_WITHOUT_TIMES
    assert result.message.startswith(
        "Procedure/rfa1 records performedPeriod.start 2026-05-01 and performedPeriod.end "
        "2026-05-01 but not start and end times"
    )
    assert "performedPeriod.start and performedPeriod.end" in result.action
    assert f"{PROJECT}|operation-duration" in result.action


def test_unsupported_duration_unit_is_reported() -> None:
    result = operation(date_only_ablation(), duration_observation(value=1, unit="d"))
    assert isinstance(result, Problem) and result.reason is Reason.DURATION_UNSUPPORTED_UNIT
    assert "Observation/dur1 valueQuantity has unit 'd'" in result.message
    assert result.provenance is not None and result.provenance.id == "dur1"


def test_duration_observation_values_are_range_checked() -> None:
    result = operation(date_only_ablation(), duration_observation(value=4, unit="h"))
    assert isinstance(result, Problem) and result.reason is Reason.DURATION_OUT_OF_RANGE
    assert "240 minutes" in result.message
    zero = operation(date_only_ablation(), duration_observation(value=0))
    assert isinstance(zero, Problem) and zero.reason is Reason.DURATION_INVALID


def test_duration_observation_without_a_quantity_is_invalid() -> None:
    obs = duration_observation(valueQuantity=None, valueString="about forty minutes")
    result = operation(date_only_ablation(), obs)
    assert isinstance(result, Problem) and result.reason is Reason.DURATION_INVALID
    assert "forty" not in result.message


def test_most_recent_duration_observation_is_used() -> None:
    original = duration_observation(id="d-orig", value=25, effective="2026-05-01T09:42:00+08:00")
    corrected = duration_observation(
        id="d-corr", value=38, status="corrected", effective="2026-05-01T11:00:00+08:00"
    )
    for order in ([original, corrected], [corrected, original]):
        result = operation(date_only_ablation(), *order)
        assert isinstance(result, OperationTime) and result.minutes == 38


def test_missing_ucum_system_is_tolerated_in_the_pipeline() -> None:
    result = operation(date_only_ablation(), duration_observation(system=None))
    assert isinstance(result, OperationTime) and result.minutes == 42
    bad_system = duration_observation(system="http://example.org/units")
    problem = operation(date_only_ablation(), bad_system)
    assert isinstance(problem, Problem) and UCUM in problem.message
