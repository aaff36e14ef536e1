"""Rules 1-3: which Procedure is the index ablation, and which procedures rule scoring out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from fhir_mappings import (
    AblationProcedure,
    OperationTime,
    PatientInputs,
    Problem,
    Reason,
    map_patient,
)
from tests.fhir_builders import (
    CPT,
    ICD10PCS,
    PROJECT,
    Resource,
    ablation_procedure,
    hb_observation,
    mvd_procedure,
    procedure,
)

CST = timezone(timedelta(hours=8))


def mapped(*resources: Resource) -> PatientInputs:
    return map_patient(list(resources), "p1")


def reasons(inputs: PatientInputs) -> list[Reason]:
    return [p.reason for p in inputs.exclusions]


def test_completed_ablation_is_the_index_with_provenance() -> None:
    inputs = mapped(ablation_procedure(version="3"), hb_observation())
    ablation = inputs.ablation
    assert isinstance(ablation, AblationProcedure)
    assert ablation.provenance.reference == "Procedure/rfa1/_history/3"
    assert ablation.provenance.recorded == "2026-05-01T09:42:00+08:00"
    assert ablation.ended_at == datetime(2026, 5, 1, 9, 42, tzinfo=CST)
    assert ablation.ended_at.tzinfo is not None
    assert ablation.started_at == datetime(2026, 5, 1, 9, 0, tzinfo=CST)
    assert ablation.ended_at_has_time
    assert ablation.ended_at_source == "performedPeriod.end"
    assert (ablation.code.system, ablation.code.code) == (ICD10PCS, "005M3ZZ")
    assert inputs.exclusions == ()
    assert inputs.scorable


@pytest.mark.parametrize(
    ("system", "code"),
    [(ICD10PCS, "005M3ZZ"), (CPT, "64640"), (PROJECT, "ct-guided-stylomastoid-rfa")],
)
def test_each_ablation_code_is_recognised(system: str, code: str) -> None:
    inputs = mapped(ablation_procedure(codings=[(system, code, "display")]))
    assert inputs.ablation is not None
    assert (inputs.ablation.code.system, inputs.ablation.code.code) == (system, code)


def test_no_ablation_gives_no_ablation_and_no_inputs() -> None:
    other = procedure(id="x1", codings=[(CPT, "64612", "Chemodenervation")], start="2026-05-01")
    for inputs in (mapped(), mapped(other), mapped(hb_observation())):
        assert inputs.ablation is None
        assert inputs.operation_time is None and inputs.hb_grade is None
        assert reasons(inputs) == [Reason.NO_ABLATION]
        problem = inputs.exclusions[0]
        assert "Patient/p1" in problem.message
        assert "64640" in problem.action and "completed" in problem.action
        assert not inputs.scorable


@pytest.mark.parametrize("status", ["preparation", "in-progress", "on-hold", "stopped", "unknown"])
def test_unfinished_ablation_is_not_scored_yet(status: str) -> None:
    inputs = mapped(ablation_procedure(status=status), hb_observation())
    assert inputs.ablation is None
    assert inputs.operation_time is None and inputs.hb_grade is None
    assert reasons(inputs) == [Reason.PROCEDURE_NOT_COMPLETED]
    problem = inputs.exclusions[0]
    assert problem.message.startswith(f"The ablation Procedure/rfa1 has status '{status}'")
    assert "scored once the Procedure is recorded as completed" in problem.action
    assert problem.provenance is not None and problem.provenance.id == "rfa1"


def test_several_unfinished_ablations_are_all_named() -> None:
    inputs = mapped(
        ablation_procedure(id="a", status="in-progress"),
        ablation_procedure(id="b", status="on-hold", end="2026-04-01T10:00:00+08:00"),
    )
    (problem,) = inputs.exclusions
    assert problem.message.startswith("The ablation Procedure/a has status 'in-progress'")
    assert "Procedure/b has status 'on-hold'" in problem.message


def test_ablation_without_status_is_not_completed() -> None:
    inputs = mapped(ablation_procedure(status=None))  # type: ignore[arg-type]
    assert reasons(inputs) == [Reason.PROCEDURE_NOT_COMPLETED]
    assert "status none" in inputs.exclusions[0].message


@pytest.mark.parametrize("status", ["entered-in-error", "not-done"])
def test_void_ablations_are_ignored_entirely(status: str) -> None:
    alone = mapped(ablation_procedure(id="void", status=status))
    assert reasons(alone) == [Reason.NO_ABLATION]
    assert f"Procedure/void: ablation with status '{status}' ignored" in alone.ignored
    with_real = mapped(
        ablation_procedure(), ablation_procedure(id="void", status=status, end="2025-01-01")
    )
    assert with_real.ablation is not None and with_real.ablation.provenance.id == "rfa1"
    assert with_real.exclusions == ()  # a void earlier record is no repeat procedure


def test_unfinished_ablation_beside_a_completed_one_is_only_noted() -> None:
    inputs = mapped(
        ablation_procedure(), ablation_procedure(id="next", status="in-progress", end=None)
    )
    assert inputs.ablation is not None and inputs.ablation.provenance.id == "rfa1"
    assert "Procedure/next: ablation with status 'in-progress' ignored" in inputs.ignored


def test_end_falls_back_to_performed_date_time() -> None:
    inputs = mapped(ablation_procedure(start=None, end=None, performed="2026-05-01T09:42:00Z"))
    assert inputs.ablation is not None
    assert inputs.ablation.ended_at == datetime(2026, 5, 1, 9, 42, tzinfo=UTC)
    assert inputs.ablation.ended_at_source == "performedDateTime"
    assert inputs.ablation.started_at is None


def test_end_falls_back_to_period_start_and_says_so() -> None:
    inputs = mapped(ablation_procedure(end=None))
    assert inputs.ablation is not None
    assert inputs.ablation.ended_at == datetime(2026, 5, 1, 9, 0, tzinfo=CST)
    assert inputs.ablation.ended_at_source == "performedPeriod.start"


def test_date_only_end_is_timezone_aware_and_flagged() -> None:
    inputs = mapped(ablation_procedure(start="2026-05-01", end="2026-05-01"))
    assert inputs.ablation is not None
    assert inputs.ablation.ended_at == datetime(2026, 5, 1, tzinfo=UTC)
    assert not inputs.ablation.ended_at_has_time


@pytest.mark.parametrize(
    "dates",
    [
        {"start": None, "end": None},
        {"start": "yesterday", "end": "2026-05-01 09:42"},
        {"start": None, "end": None, "performedString": "early May"},
        {"start": None, "end": None, "performedPeriod": "2026-05-01/2026-05-02"},  # DSTU2-ish
    ],
)
def test_completed_ablation_without_usable_date_cannot_be_scored(dates: dict[str, Any]) -> None:
    inputs = mapped(ablation_procedure(**dates), hb_observation())
    assert inputs.ablation is None
    assert inputs.operation_time is None and inputs.hb_grade is None
    assert reasons(inputs) == [Reason.PROCEDURE_DATE_MISSING]
    assert "Procedure/rfa1" in inputs.exclusions[0].message
    assert "early May" not in inputs.exclusions[0].message


def test_an_undated_second_ablation_also_blocks_scoring() -> None:
    inputs = mapped(ablation_procedure(), ablation_procedure(id="rfa0", start=None, end=None))
    assert inputs.ablation is None
    assert reasons(inputs) == [Reason.PROCEDURE_DATE_MISSING]
    assert "Procedure/rfa0" in inputs.exclusions[0].message


def test_most_recent_ablation_is_the_index_and_earlier_ones_are_repeats() -> None:
    inputs = mapped(
        ablation_procedure(
            id="first", start="2025-06-01T09:00:00+08:00", end="2025-06-01T09:35:00+08:00"
        ),
        ablation_procedure(id="second", start="2025-11-03", end="2025-11-03"),
        ablation_procedure(id="third"),
    )
    assert inputs.ablation is not None and inputs.ablation.provenance.id == "third"
    assert reasons(inputs) == [Reason.REPEAT_PROCEDURE, Reason.REPEAT_PROCEDURE]
    messages = [p.message for p in inputs.exclusions]
    assert all(m.startswith("Procedure/third (ended 2026-05-01T09:42:00+08:00)") for m in messages)
    assert any("Procedure/first ended 2025-06-01T09:35:00+08:00" in m for m in messages)
    assert any("Procedure/second ended 2025-11-03" in m for m in messages)
    assert isinstance(inputs.operation_time, OperationTime)  # inputs are still derived and shown


def test_recorded_order_does_not_matter_for_the_index() -> None:
    early = ablation_procedure(id="zz", start="2026-01-01T09:00:00Z", end="2026-01-01T09:40:00Z")
    late = ablation_procedure(id="aa")
    assert mapped(early, late) == mapped(late, early)
    assert mapped(early, late).ablation.provenance.id == "aa"  # type: ignore[union-attr]


def test_equal_end_instants_break_ties_by_id_and_are_not_repeats() -> None:
    a = ablation_procedure(id="a-icd", codings=[(ICD10PCS, "005M3ZZ", "d")])
    b = ablation_procedure(id="b-cpt", end="2026-05-01T01:42:00Z", codings=[(CPT, "64640", "d")])
    inputs = mapped(a, b)
    assert inputs.ablation is not None and inputs.ablation.provenance.id == "b-cpt"
    assert inputs.exclusions == ()
    assert any(
        n.startswith("Procedure/a-icd: completed ablation ending at the same time")
        for n in inputs.ignored
    )


def test_same_day_date_only_record_is_treated_as_the_same_procedure() -> None:
    inputs = mapped(
        ablation_procedure(),
        ablation_procedure(id="billing", start=None, end=None, performed="2026-05-01"),
    )
    assert inputs.ablation is not None and inputs.ablation.provenance.id == "rfa1"
    assert inputs.exclusions == ()
    assert isinstance(inputs.operation_time, OperationTime)


def test_later_mvd_rules_scoring_out() -> None:
    inputs = mapped(ablation_procedure(), hb_observation(), mvd_procedure())
    assert reasons(inputs) == [Reason.LATER_TREATMENT]
    problem = inputs.exclusions[0]
    assert "Procedure/mvd1" in problem.message and "61458" in problem.message
    assert "Procedure/rfa1" in problem.message
    assert problem.provenance is not None and problem.provenance.id == "mvd1"
    assert not inputs.scorable


def test_earlier_or_unfinished_or_undated_mvd_does_not() -> None:
    inputs = mapped(
        ablation_procedure(),
        mvd_procedure(id="old", start="2020-01-01T08:00:00Z", end="2020-01-01T11:00:00Z"),
        mvd_procedure(id="planned", status="preparation"),
        mvd_procedure(id="undated", start=None, end=None),
    )
    assert inputs.exclusions == ()
    assert "Procedure/planned: later treatment with status 'preparation'" in inputs.ignored
    assert "Procedure/undated: later treatment without a usable date" in inputs.ignored


def test_a_later_ablation_is_the_index_not_a_later_treatment() -> None:
    later = ablation_procedure(
        id="rfa2", start="2026-09-01T09:00:00+08:00", end="2026-09-01T09:40:00+08:00"
    )
    inputs = mapped(ablation_procedure(), later)
    assert inputs.ablation is not None and inputs.ablation.provenance.id == "rfa2"
    assert reasons(inputs) == [Reason.REPEAT_PROCEDURE]
    assert "Procedure/rfa1" in inputs.exclusions[0].message


def test_no_ablation_problem_is_a_problem_instance() -> None:
    (problem,) = mapped().exclusions
    assert isinstance(problem, Problem) and problem.provenance is None


def test_unknown_status_text_is_not_echoed() -> None:
    inputs = mapped(ablation_procedure(status="ChenWei"))
    assert reasons(inputs) == [Reason.PROCEDURE_NOT_COMPLETED]
    assert "has status an unrecognised value" in inputs.exclusions[0].message
    assert "ChenWei" not in inputs.exclusions[0].message
