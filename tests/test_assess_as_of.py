"""Assessing "as of" a date (clinical-presentation.md §6): everything dated after the date is
ignored (procedures, grades, recurrences), and a date before the index ablation answers "no
ablation on record as of ...". ``hfs-cds score --at`` and the hook's clock both rely on it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cds_service.assessment import Assessment, Assessor, Status
from fhir_mappings import HouseBrackmannGrade, Reason, map_patient
from tests import fhir_builders as fb

PROCEDURE_END = datetime(2026, 5, 1, 1, 42, tzinfo=UTC)  # 09:42 +08:00, the builders' default


def at(days: float) -> datetime:
    return PROCEDURE_END + timedelta(days=days)


def reasons(a: Assessment) -> list[Reason]:
    return [p.reason for p in a.problems]


def test_a_date_before_the_ablation_is_not_applicable_with_the_date(assessor: Assessor) -> None:
    """Before: it scored the future ablation as 'just done' (max(0, months))."""
    a = assessor.assess(fb.typical_patient(), as_of=datetime(2026, 4, 30, tzinfo=UTC))
    assert a.status is Status.NOT_APPLICABLE
    assert a.not_applicable_because == "no ablation on record as of 2026-04-30"
    assert a.risks == () and a.months_since_procedure is None
    assert a.inputs.ablations_after_as_of[0].reference == "Procedure/rfa1/_history/1"


def test_a_moment_with_a_time_is_shown_to_the_minute(assessor: Assessor) -> None:
    a = assessor.assess(fb.typical_patient(), as_of=at(-1))
    assert a.not_applicable_because == "no ablation on record as of 2026-04-30T01:42+00:00"


def test_no_ablation_at_all_keeps_its_plain_reason(assessor: Assessor) -> None:
    a = assessor.assess([fb.patient(), fb.hfs_condition()], as_of=at(1))
    assert a.not_applicable_because == "no ablation on record"


def test_a_grade_recorded_after_the_date_is_ignored(assessor: Assessor) -> None:
    """The issue's case: a grade recorded after the date must not be scored as of that date.
    Between the ablation (01:42Z) and the grade (07:00Z) no grade is on record yet."""
    a = assessor.assess(fb.typical_patient(), as_of=datetime(2026, 5, 1, 5, tzinfo=UTC))
    assert a.status is Status.NOT_SCORED
    assert reasons(a) == [Reason.NO_HB_IN_WINDOW]
    assert (
        "Observation/hb1: effective 2026-05-01T15:00:00+08:00 is after the as-of date"
        in a.inputs.ignored
    )
    assert assessor.assess(fb.typical_patient(), as_of=at(1)).status is Status.SCORED


def test_a_grade_effective_before_but_issued_after_the_date_is_ignored() -> None:
    """``issued`` is when the result entered the record: not on record before it."""
    grade = fb.hb_observation(issued="2026-05-04T09:00:00+08:00")
    inputs = map_patient(
        [fb.ablation_procedure(), grade], "p1", as_of=datetime(2026, 5, 3, tzinfo=UTC)
    )
    assert not isinstance(inputs.hb_grade, HouseBrackmannGrade)
    assert "Observation/hb1: issued 2026-05-04T09:00:00+08:00 is after the as-of date" in (
        inputs.ignored
    )


def test_a_corrected_grade_recorded_later_does_not_replace_the_earlier_one() -> None:
    """As of day 2 the first grade (HB II) is the one on record; a later record of HB I is not."""
    first = fb.hb_observation(id="hb1", grade="II")
    later = fb.hb_observation(
        id="hb-later",
        grade="I",
        effective="2026-05-01T12:00:00+08:00",
        issued="2026-05-05T10:00:00+08:00",
    )
    resources = [fb.ablation_procedure(), first, later]
    as_of_day_2 = map_patient(resources, "p1", as_of=at(2))
    assert isinstance(as_of_day_2.hb_grade, HouseBrackmannGrade)
    assert as_of_day_2.hb_grade.grade == 2
    as_of_now = map_patient(resources, "p1", as_of=at(10))
    assert isinstance(as_of_now.hb_grade, HouseBrackmannGrade) and as_of_now.hb_grade.grade == 1


def test_a_recurrence_after_the_date_is_ignored(assessor: Assessor) -> None:
    resources = [*fb.typical_patient(), fb.recurrence_observation()]  # 2026-08-01
    before = assessor.assess(resources, as_of=datetime(2026, 7, 1, tzinfo=UTC))
    assert before.status is Status.SCORED
    after = assessor.assess(resources, as_of=datetime(2026, 8, 15, tzinfo=UTC))
    assert reasons(after) == [Reason.RECURRENCE_RECORDED]


def test_a_condition_recorded_after_the_date_is_ignored_even_with_an_earlier_onset(
    assessor: Assessor,
) -> None:
    """Onset 1 August but recorded 3 August: as of 2 August nobody had recorded it."""
    resources = [*fb.typical_patient(), fb.recurrence_condition()]
    a = assessor.assess(resources, as_of=datetime(2026, 8, 2, 12, tzinfo=UTC))
    assert a.status is Status.SCORED
    assert "Condition/recc1: recordedDate 2026-08-03 is after the as-of date" in a.inputs.ignored


def test_a_later_treatment_after_the_date_is_ignored(assessor: Assessor) -> None:
    resources = [*fb.typical_patient(), fb.mvd_procedure()]  # ends 2026-09-10
    assert assessor.assess(resources, as_of=datetime(2026, 9, 1, tzinfo=UTC)).status is (
        Status.SCORED
    )
    later = assessor.assess(resources, as_of=datetime(2026, 9, 11, tzinfo=UTC))
    assert reasons(later) == [Reason.LATER_TREATMENT]


def test_a_repeat_ablation_after_the_date_leaves_the_first_as_the_index(
    assessor: Assessor,
) -> None:
    repeat = fb.ablation_procedure(
        id="rfa2", start="2026-09-01T09:00:00+08:00", end="2026-09-01T09:40:00+08:00"
    )
    a = assessor.assess([*fb.typical_patient(), repeat], as_of=datetime(2026, 6, 1, tzinfo=UTC))
    assert a.status is Status.SCORED
    assert a.inputs.ablation is not None and a.inputs.ablation.provenance.id == "rfa1"
    assert a.inputs.ablations_after_as_of[0].id == "rfa2"


def test_a_same_day_date_is_not_after_the_date() -> None:
    """A date-only value covering the as-of moment is not certainly later, so it is kept."""
    inputs = map_patient(
        [fb.ablation_procedure(start="2026-05-01", end="2026-05-01"), fb.hb_observation()],
        "p1",
        as_of=datetime(2026, 5, 1, 0, 30, tzinfo=UTC),
    )
    assert inputs.ablation is not None


def test_a_naive_as_of_is_read_as_utc() -> None:
    naive = map_patient(fb.typical_patient(), "p1", as_of=datetime(2026, 4, 30))
    aware = map_patient(fb.typical_patient(), "p1", as_of=datetime(2026, 4, 30, tzinfo=UTC))
    assert naive == aware and naive.ablation is None


def test_without_as_of_the_mapping_reads_everything() -> None:
    """The recalibration cohort maps without a date and applies its own window."""
    inputs = map_patient([*fb.typical_patient(), fb.mvd_procedure()], "p1")
    assert [p.reason for p in inputs.exclusions] == [Reason.LATER_TREATMENT]
