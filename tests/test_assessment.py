"""``Assessor.assess``: the one pipeline from resources to an assessment, and its JSON form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cds_service.assessment import Assessor, Status
from fhir_mappings import Reason
from tests import fhir_builders as fb
from tests.cds_invariants import assert_no_empty_members

PROCEDURE_END = datetime(2026, 5, 1, 1, 42, tzinfo=UTC)  # 09:42 +08:00, the builders' default


def at(days: float) -> datetime:
    return PROCEDURE_END + timedelta(days=days)


def test_typical_patient_is_scored_with_provenance(assessor: Assessor) -> None:
    a = assessor.assess(fb.typical_patient(), as_of=at(10))
    assert a.status is Status.SCORED
    assert [round(p.risk, 3) for p in a.risks] == [0.153, 0.283, 0.606]
    assert a.estimate_tier is not None and a.estimate_tier.id == "intermediate"
    assert a.schedule_tier is a.estimate_tier
    assert (a.x1, a.x2) == (1.0, 2.0)
    assert (
        a.operation_time is not None
        and a.operation_time.provenance.reference == "Procedure/rfa1/_history/1"
    )
    assert (
        a.hb_grade is not None and a.hb_grade.provenance.reference == "Observation/hb1/_history/1"
    )
    assert a.months_since_procedure == pytest.approx(10 / 30.4375)


def test_patient_id_is_inferred_from_the_resources(assessor: Assessor) -> None:
    assert assessor.assess(fb.typical_patient(), as_of=at(1)).inputs.patient_id == "p1"


def test_conditional_risk_from_two_weeks_on(assessor: Assessor) -> None:
    assert assessor.assess(fb.typical_patient(), as_of=at(7)).conditional is None
    later = assessor.assess(fb.typical_patient(), as_of=at(90))
    assert later.conditional is not None
    assert later.conditional.from_month == pytest.approx(90 / 30.4375)
    assert later.conditional.low <= later.conditional.risk <= later.conditional.high


def test_the_schedule_tier_reads_the_upper_end_and_the_estimate_tier_the_point(
    assessor: Assessor,
) -> None:
    """HB III after 42 min: point 6.8% (low) but the binary-HB coding gives 60.6%, so the
    follow-up schedule is intermediate while the estimate stays low."""
    resources = [fb.ablation_procedure(), fb.hb_observation(grade="III")]
    a = assessor.assess(resources, as_of=at(1))
    assert a.risk_at(12).risk < 0.30 and a.risk_at(12).high > 0.30
    assert a.estimate_tier is not None and a.estimate_tier.id == "low"
    assert a.schedule_tier is not None and a.schedule_tier.id == "intermediate"
    assert a.to_json()["tier"] == "low" and a.to_json()["scheduleTier"] == "intermediate"


def test_an_ablation_after_the_as_of_date_is_not_yet_on_record(assessor: Assessor) -> None:
    a = assessor.assess(fb.typical_patient(), as_of=at(-1))
    assert a.status is Status.NOT_APPLICABLE
    assert a.not_applicable_because == "no ablation on record as of 2026-04-30T01:42+00:00"


def test_a_grade_dated_minutes_ahead_of_our_clock_is_on_record(assessor: Assessor) -> None:
    """EHR and service clocks drift: a grade just recorded must not vanish as "future"."""
    resources = [
        fb.ablation_procedure(start="2026-05-01T09:00:00+00:00", end="2026-05-01T09:42:00+00:00"),
        fb.hb_observation(effective="2026-05-02T10:02:00+00:00"),
    ]
    as_of = datetime(2026, 5, 2, 10, 0, tzinfo=UTC)  # the grade is 2 minutes "ahead"
    assert assessor.assess(resources, "p1", as_of=as_of).status is Status.SCORED
    later = datetime(2026, 5, 2, 9, 0, tzinfo=UTC)  # an hour before the grade: not yet recorded
    assert assessor.assess(resources, "p1", as_of=later).status is Status.NOT_SCORED


def test_beyond_the_horizon_is_not_applicable(assessor: Assessor) -> None:
    a = assessor.assess(fb.typical_patient(), as_of=at(366))
    assert a.status is Status.NOT_APPLICABLE
    assert a.not_applicable_because is not None and "12-month horizon" in a.not_applicable_because


def test_no_ablation_is_not_applicable(assessor: Assessor) -> None:
    a = assessor.assess([fb.patient(), fb.hfs_condition()], as_of=at(1))
    assert a.status is Status.NOT_APPLICABLE and a.not_applicable_because == "no ablation on record"


def test_ablation_in_progress_is_not_scored_with_the_reason(assessor: Assessor) -> None:
    a = assessor.assess([fb.ablation_procedure(status="in-progress", end=None)], as_of=at(0))
    assert a.status is Status.NOT_SCORED
    assert [p.reason for p in a.problems] == [Reason.PROCEDURE_NOT_COMPLETED]


def test_recurrence_on_record_is_not_scored(assessor: Assessor) -> None:
    resources = [*fb.typical_patient(), fb.recurrence_observation()]
    a = assessor.assess(resources, as_of=at(120))
    assert a.status is Status.NOT_SCORED
    assert Reason.RECURRENCE_RECORDED in [p.reason for p in a.problems]
    assert a.hb_grade is not None and a.x2 == 2.0  # derived inputs are still shown


def test_json_has_no_empty_members_in_every_status(assessor: Assessor) -> None:
    cases = [
        fb.typical_patient(),
        [fb.ablation_procedure()],
        [fb.patient()],
        [fb.ablation_procedure(), fb.hb_observation(grade="V")],
    ]
    for resources in cases:
        assert_no_empty_members(assessor.assess(resources, as_of=at(30)).to_json())


def test_risk_at_an_unreported_month_raises_key_error(assessor: Assessor) -> None:
    with pytest.raises(KeyError):
        assessor.assess(fb.typical_patient(), as_of=at(1)).risk_at(9)
