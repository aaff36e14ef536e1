"""Cohort extraction: FHIR resources, Bulk Data NDJSON and CSV -> one row per patient, and every
patient left out with the reason; outcomes simulated from a card come back out unchanged."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.encounter import Encounter

from cds_service.model import RecurrenceModel, load_model_card
from cds_service.recalibration import (
    Cohort,
    CohortError,
    cohort_from_csv,
    cohort_from_resources,
    cohort_from_source,
    draw_outcomes,
    kaplan_meier,
    read_ndjson_dir,
    simulate_follow_up,
    write_ndjson_dir,
)
from cds_service.recalibration.cohort import cohort_from_csv_text
from cds_service.recalibration.errors import SourceError
from fhir_mappings import load_value_sets
from tests import fhir_builders as fb

Resource = dict[str, Any]
CARD = load_model_card()
VALUE_SETS = load_value_sets()
AS_OF = datetime(2027, 1, 1, tzinfo=UTC)
TZ = timezone(timedelta(hours=8))
#: fb.ablation_procedure() ends here (a 42-minute ablation), the model's time origin.
END = datetime(2026, 5, 1, 9, 42, tzinfo=TZ)


def months_after_end(moment: datetime) -> float:
    return (moment - END).total_seconds() / 86400 / CARD.days_per_month


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


HFS_FOLLOW_UP = {"system": fb.PROJECT, "code": "hfs-follow-up"}
HFS_DIAGNOSIS = {"system": "http://snomed.info/sct", "code": "13753008"}


def encounter(
    id: str,
    end: datetime,
    patient: str = "p1",
    status: str = "finished",
    hfs: bool = True,
    **extra: Any,
) -> Resource:
    """An ambulatory Encounter; ``hfs`` types it as an HFS follow-up (an assessment)."""
    resource: Resource = {
        "resourceType": "Encounter",
        "id": id,
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": iso(end - timedelta(minutes=15)), "end": iso(end)},
    }
    if hfs:
        resource["type"] = [{"coding": [HFS_FOLLOW_UP]}]
    resource.update(extra)
    return resource


def base_patients(
    n: int, *, seed: int, prefix: str, first: datetime = datetime(2023, 1, 9, 9, 0, tzinfo=TZ)
) -> dict[str, list[Resource]]:
    """``n`` scorable patients as an EHR records them: diagnosis, ablation, HB grade 6 h later.

    Operation times and HB grades are drawn (seeded) around the published cohort; ablations spread
    over the 350 days from ``first`` (by default all in 2023). Ids start with ``prefix`` so tests
    sharing a FHIR server don't collide.
    """
    rng = np.random.default_rng(seed)
    patients: dict[str, list[Resource]] = {}
    for i in range(n):
        pid = f"{prefix}{i:03d}"
        end = first + timedelta(days=int(rng.integers(0, 350)), minutes=int(rng.integers(0, 600)))
        minutes = int(np.clip(rng.normal(33, 10), 10, 90))
        grade = str(rng.choice(["I", "II", "III"], p=[0.3, 0.45, 0.25]))
        patients[pid] = [
            fb.patient(id=pid),
            fb.hfs_condition(id=f"{pid}-hfs", patient=pid),
            fb.ablation_procedure(
                id=f"{pid}-rfa",
                start=iso(end - timedelta(minutes=minutes)),
                end=iso(end),
                patient=pid,
            ),
            fb.hb_observation(
                id=f"{pid}-hb", grade=grade, effective=iso(end + timedelta(hours=6)), patient=pid
            ),
        ]
    return patients


def extract(*resources: Resource, **kw: Any) -> Cohort:
    return cohort_from_resources(list(resources), CARD, VALUE_SETS, as_of=AS_OF, **kw)


def assert_outcome(cohort: Cohort, months: float, event: int, outcome: str) -> None:
    """The cohort's only row ended at ``months`` with ``event`` recorded by ``outcome``."""
    _, _, time, recorded, source = only_row(cohort)
    assert (recorded, source) == (event, outcome)
    assert time == pytest.approx(months)


def only_row(cohort: Cohort) -> tuple[float, int, float, int, str]:
    assert not cohort.excluded, cohort.report()
    (row,) = cohort.rows
    return row.operation_minutes, row.hb_grade, row.time_months, row.event, row.outcome


# -- outcomes from FHIR -----------------------------------------------------------------------------


def test_censored_at_the_last_encounter() -> None:
    seen = END + timedelta(days=100)
    cohort = extract(
        *fb.typical_patient(),
        encounter("e1", END + timedelta(days=40)),
        encounter("e2", seen),
    )
    assert only_row(cohort)[:2] == (42.0, 2)
    assert_outcome(cohort, 100 / 30.4375, 0, "Encounter/e2")
    assert cohort.date_range() == {
        "first_procedure": "2026-05-01",
        "last_procedure": "2026-05-01",
        "follow_up_until": "2026-08-09",
    }


def test_censored_at_the_last_hfs_assessment_not_at_any_contact() -> None:
    """A later blood pressure, an unrelated visit or procedure do not extend follow-up."""
    late_obs = fb.observation(
        id="bp1",
        coding=("http://loinc.org", "85354-9", "Blood pressure"),
        effective=iso(END + timedelta(days=150)),
    )
    other_visit = encounter("gp", END + timedelta(days=170), hfs=False)
    other_procedure = fb.procedure(
        id="x1",
        codings=[("http://snomed.info/sct", "80146002", "Appendectomy")],
        start=iso(END + timedelta(days=179)),
        end=iso(END + timedelta(days=180)),
    )
    cohort = extract(
        *fb.typical_patient(),
        encounter("e1", END + timedelta(days=100)),
        late_obs,
        other_visit,
        other_procedure,
    )
    assert_outcome(cohort, 100 / 30.4375, 0, "Encounter/e1")


def test_an_hb_grade_a_follow_up_observation_or_an_hfs_reason_is_an_assessment() -> None:
    later_hb = fb.hb_observation(id="hb9", effective=iso(END + timedelta(days=120)))
    cohort = extract(*fb.typical_patient(), encounter("e1", END + timedelta(days=100)), later_hb)
    assert_outcome(cohort, 120 / 30.4375, 0, "Observation/hb9")
    visit = encounter(
        "r1", END + timedelta(days=130), hfs=False, reasonCode=[{"coding": [HFS_DIAGNOSIS]}]
    )
    cohort = extract(*fb.typical_patient(), later_hb, visit)
    assert_outcome(cohort, 130 / 30.4375, 0, "Encounter/r1")
    scored = fb.observation(
        id="sev",
        coding=(fb.PROJECT, "hfs-follow-up", "x"),
        effective=iso(END + timedelta(days=140)),
    )
    absent = fb.observation(
        id="absent",
        coding=(fb.PROJECT, "hfs-follow-up", "x"),
        effective=iso(END + timedelta(days=160)),
        dataAbsentReason={"text": "did not attend"},
    )
    cohort = extract(*fb.typical_patient(), visit, scored, absent)
    assert_outcome(cohort, 140 / 30.4375, 0, "Observation/sev")


def test_planned_or_cancelled_encounters_conditions_and_future_dates_are_not_contacts() -> None:
    cohort = extract(
        *fb.typical_patient(),
        encounter("e1", END + timedelta(days=30)),
        encounter("planned", END + timedelta(days=200), status="planned"),
        encounter("cancelled", END + timedelta(days=210), status="cancelled"),
        encounter("future", AS_OF + timedelta(days=5)),
        fb.condition(
            id="c9",
            coding=("http://snomed.info/sct", "38341003", "Hypertension"),
            onset="2026-10-01",
        ),
    )
    assert_outcome(cohort, 30 / 30.4375, 0, "Encounter/e1")


def test_recurrence_condition_is_the_event_at_its_onset() -> None:
    cohort = extract(
        *fb.typical_patient(),
        fb.recurrence_condition(id="rec", onset="2026-08-01", recorded="2026-08-03"),
        encounter("e1", END + timedelta(days=200)),
    )
    onset = datetime(2026, 8, 1, tzinfo=TZ)  # a date: the start of that day, ablation's zone
    assert_outcome(cohort, months_after_end(onset), 1, "Condition/rec")


def test_recurrence_observation_is_the_event_at_its_effective_time() -> None:
    cohort = extract(
        *fb.typical_patient(), fb.recurrence_observation(effective="2026-07-01T10:00:00+08:00")
    )
    when = datetime(2026, 7, 1, 10, tzinfo=TZ)
    assert_outcome(cohort, months_after_end(when), 1, "Observation/rec1")


def test_a_recurrence_answered_no_or_refuted_is_not_an_event() -> None:
    cohort = extract(
        *fb.typical_patient(),
        fb.recurrence_observation(id="no", effective="2026-07-01T10:00:00+08:00", value="no"),
        fb.recurrence_condition(id="refuted", verification_status="refuted"),
        encounter("e1", END + timedelta(days=90)),
    )
    assert only_row(cohort)[3] == 0


def test_repeat_ablation_is_the_event_and_the_first_ablation_is_the_index() -> None:
    repeat_end = datetime(2026, 9, 1, 10, 25, tzinfo=TZ)
    cohort = extract(
        *fb.typical_patient(),
        fb.ablation_procedure(
            id="rfa2", start="2026-09-01T10:00:00+08:00", end=iso(repeat_end), patient="p1"
        ),
    )
    minutes, grade, months, event, outcome = only_row(cohort)
    assert (minutes, grade, event, outcome) == (42.0, 2, 1, "Procedure/rfa2")
    assert months == pytest.approx(months_after_end(repeat_end))


def test_microvascular_decompression_is_the_event() -> None:
    cohort = extract(*fb.typical_patient(), fb.mvd_procedure())
    mvd_end = datetime(2026, 9, 10, 11, 30, tzinfo=TZ)
    assert_outcome(cohort, months_after_end(mvd_end), 1, "Procedure/mvd1")


def test_the_earliest_of_several_outcomes_counts() -> None:
    cohort = extract(
        *fb.typical_patient(),
        fb.mvd_procedure(),
        fb.recurrence_condition(id="rec", onset="2026-06-15"),
        encounter("e1", END + timedelta(days=300)),
    )
    assert only_row(cohort)[3:] == (1, "Condition/rec")


def test_outcomes_after_as_of_are_ignored() -> None:
    cohort = cohort_from_resources(
        [
            *fb.typical_patient(),
            fb.recurrence_condition(id="rec", onset="2026-08-01"),
            encounter("e1", END + timedelta(days=30)),
        ],
        CARD,
        VALUE_SETS,
        as_of=datetime(2026, 7, 1, tzinfo=UTC),
    )
    assert only_row(cohort)[3:] == (0, "Encounter/e1")


# -- patients left out ------------------------------------------------------------------------------


def test_every_patient_left_out_is_reported_with_the_reason() -> None:
    def patient(pid: str, hb: Resource | None, *extra: Resource, **rfa: Any) -> list[Resource]:
        out = [fb.patient(id=pid), fb.ablation_procedure(id=f"{pid}-rfa", patient=pid, **rfa)]
        return out + ([hb] if hb else []) + list(extra)

    def hb(pid: str, grade: str, **kw: Any) -> Resource:
        return fb.hb_observation(id=f"{pid}-hb", grade=grade, patient=pid, **kw)

    seen = END + timedelta(days=60)
    resources = [
        *patient("ok", hb("ok", "II"), encounter("ok-e", seen, patient="ok")),
        *patient("hb4", hb("hb4", "IV"), encounter("hb4-e", seen, patient="hb4")),
        *patient("nohb", None, encounter("nohb-e", seen, patient="nohb")),
        *patient("prelim", hb("prelim", "II", status="preliminary")),
        *patient("running", hb("running", "II"), status="in-progress"),
        *patient("short", hb("short", "II"), start="2026-05-01T09:40:00+08:00"),
        fb.patient(id="noablation"),
    ]
    cohort = extract(*resources)
    assert [r.patient for r in cohort.rows] == ["ok"]
    reasons = {e.patient: e.reason for e in cohort.excluded}
    assert reasons == {
        "hb4": "hb-outside-model",
        "nohb": "no-hb-in-window",
        "prelim": "hb-preliminary-only",
        "running": "procedure-not-completed",
        "short": "duration-out-of-range",
    }
    assert cohort.not_candidates == 1
    report = cohort.report()
    assert "1 patients, 0 recurrences; 5 left out; 1 without an ablation" in report
    for e in cohort.excluded:
        assert f"left out {e.patient}: [{e.reason}]" in report
        assert fb.FREE_TEXT not in e.message  # identifiers and codes only


def test_no_contact_after_the_ablation_is_left_out_as_no_follow_up() -> None:
    hb_before_end = fb.hb_observation(effective="2026-05-01T09:30:00+08:00")
    cohort = extract(fb.patient(), fb.ablation_procedure(), hb_before_end)
    # The HB grade before the ablation ended is not post-ablation: the mapping rejects it first.
    assert [e.reason for e in cohort.excluded] == ["no-hb-in-window"]
    cohort = extract(*fb.typical_patient())  # HB at 6 h is the only contact: 0.2 days
    assert_outcome(cohort, 5.3 / 24 / 30.4375, 0, "Observation/hb1")
    cohort = cohort_from_resources(
        fb.typical_patient(), CARD, VALUE_SETS, as_of=datetime(2026, 5, 1, 12, tzinfo=TZ)
    )
    assert [e.reason for e in cohort.excluded] == ["no-follow-up"]


def test_date_window_on_the_index_ablation() -> None:
    patients = base_patients(10, seed=3, prefix="w")
    resources = [r for rs in patients.values() for r in rs]
    sim = simulate_follow_up(CARD, patients, seed=1, as_of=AS_OF)
    since, until = datetime(2023, 4, 1).date(), datetime(2023, 9, 30).date()
    cohort = extract(*resources, *sim.resources, since=since, until=until)
    inside = {r.patient for r in sim.cohort.rows if since <= r.procedure_end.date() <= until}  # type: ignore[union-attr]
    assert {r.patient for r in cohort.rows} == inside
    assert {e.reason for e in cohort.excluded} == {"outside-date-range"}
    assert len(cohort.rows) + len(cohort.excluded) == 10


# -- CSV --------------------------------------------------------------------------------------------


def test_csv_rows_and_every_row_left_out(tmp_path: Path) -> None:
    text = (
        "patient_id,operation_minutes,hb_grade,time_months,event\n"
        "a,42,2,6.5,1\n"
        "b,25,III,12,0\n"
        "c,40,4,3,1\n"
        "d,2,2,3,1\n"
        "e,40,2,0,0\n"
        "f,40,2,3,2\n"
        "g,abc,2,3,1\n"
    )
    path = tmp_path / "cohort.csv"
    path.write_text(text)
    cohort = cohort_from_csv(path, CARD)
    assert [
        (r.patient, r.operation_minutes, r.hb_grade, r.time_months, r.event) for r in cohort.rows
    ] == [
        ("a", 42.0, 2, 6.5, 1),
        ("b", 25.0, 3, 12.0, 0),
    ]
    assert [(e.patient, e.reason) for e in cohort.excluded] == [
        ("c", "hb-outside-model"),
        ("d", "duration-out-of-range"),
        ("e", "no-follow-up"),
        ("f", "invalid-row"),
        ("g", "invalid-row"),
    ]
    assert cohort.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert (cohort.source, cohort.location) == ("csv", "cohort.csv")
    assert cohort.date_range() is None


def test_csv_without_patient_ids_names_rows_and_round_trips() -> None:
    cohort = cohort_from_csv_text(
        "operation_minutes,hb_grade,time_months,event\n31,1,2.5,1\n29,2,12,0\n", CARD
    )
    assert [r.patient for r in cohort.rows] == ["row 2", "row 3"]
    again = cohort_from_csv_text(cohort.to_csv(), CARD)
    assert [(r.operation_minutes, r.hb_grade, r.time_months, r.event) for r in again.rows] == [
        (31.0, 1, 2.5, 1),
        (29.0, 2, 12.0, 0),
    ]


def test_csv_missing_columns_is_a_clear_error() -> None:
    with pytest.raises(CohortError, match="missing column\\(s\\) time_months, event"):
        cohort_from_csv_text("operation_minutes,hb_grade\n30,2\n", CARD, location="x.csv")


# -- simulation ---------------------------------------------------------------------------------------


def test_simulated_outcomes_come_back_from_fhir_and_ndjson_unchanged(tmp_path: Path) -> None:
    patients = base_patients(40, seed=7, prefix="sim")
    sim = simulate_follow_up(CARD, patients, seed=42, as_of=AS_OF, id_prefix="x-")
    assert len(sim.cohort) == 40 and not sim.skipped
    assert 0 < sim.cohort.n_events < 40
    all_resources = [r for rs in patients.values() for r in rs] + list(sim.resources)
    write_ndjson_dir(all_resources, tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "Condition.ndjson",
        "Encounter.ndjson",
        "Observation.ndjson",
        "Patient.ndjson",
        "Procedure.ndjson",
    ]
    data = read_ndjson_dir(tmp_path / "export")
    cohort = cohort_from_source(data, CARD, VALUE_SETS, as_of=AS_OF)
    assert not cohort.excluded, cohort.report()

    def table(c: Cohort) -> list[tuple[Any, ...]]:
        return sorted(
            (
                r.patient,
                r.operation_minutes,
                r.hb_grade,
                round(r.time_months, 9),
                r.event,
                r.outcome,
            )
            for r in c.rows
        )

    assert table(cohort) == table(sim.cohort)
    assert data.sha256 == read_ndjson_dir(tmp_path / "export").sha256


def test_simulated_resources_are_valid_fhir_r4_with_the_recurrence_code() -> None:
    sim = simulate_follow_up(CARD, base_patients(15, seed=2, prefix="v"), seed=3, as_of=AS_OF)
    conditions = [r for r in sim.resources if r["resourceType"] == "Condition"]
    encounters = [r for r in sim.resources if r["resourceType"] == "Encounter"]
    assert len(encounters) == 15 and len(conditions) == sim.cohort.n_events > 0
    for resource in conditions:
        Condition.model_validate(resource)
        (coding,) = resource["code"]["coding"]
        assert (coding["system"], coding["code"]) == (fb.PROJECT, "hfs-recurrence")
        assert "onsetDateTime" in resource
    for resource in encounters:
        Encounter.model_validate(resource)
        assert resource["status"] == "finished" and "end" in resource["period"]


def test_simulation_is_reproducible_and_skips_patients_the_service_cannot_score() -> None:
    patients = base_patients(8, seed=5, prefix="r")
    patients["r-hb4"] = [
        fb.patient(id="r-hb4"),
        fb.ablation_procedure(id="r-hb4-rfa", patient="r-hb4"),
        fb.hb_observation(id="r-hb4-hb", grade="IV", patient="r-hb4"),
    ]
    first = simulate_follow_up(CARD, patients, seed=9, as_of=AS_OF)
    again = simulate_follow_up(CARD, patients, seed=9, as_of=AS_OF)
    other = simulate_follow_up(CARD, patients, seed=10, as_of=AS_OF)
    assert first.resources == again.resources and first.resources != other.resources
    assert [(e.patient, e.reason) for e in first.skipped] == [("r-hb4", "hb-outside-model")]


def test_simulation_never_writes_dates_after_as_of() -> None:
    as_of = datetime(2023, 6, 1, tzinfo=UTC)
    sim = simulate_follow_up(CARD, base_patients(30, seed=4, prefix="f"), seed=1, as_of=as_of)
    assert sim.skipped  # ablations after as_of cannot have follow-up
    assert all(r.follow_up_end is not None and r.follow_up_end <= as_of for r in sim.cohort.rows)


def test_drawn_recurrence_times_follow_the_card() -> None:
    """Kaplan-Meier of 4000 draws for HB II, > 30 min matches the card's 15.3/28.3/60.6%."""
    n = 4000
    out = draw_outcomes(CARD, np.full(n, 42.0), np.full(n, 2), seed=123, loss_per_month=0.0)
    km = kaplan_meier(out.time_months, out.event)
    expected = RecurrenceModel(CARD).predict_risk(42.0, 2, [3, 6, 12])
    observed = [1 - km.at(m)[0] for m in (3, 6, 12)]
    np.testing.assert_allclose(observed, expected, atol=0.025)
    assert np.all(out.time_months <= CARD.horizon_months)


def test_ndjson_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a directory"):
        read_ndjson_dir(tmp_path / "missing")
    with pytest.raises(SourceError, match="no \\*.ndjson files"):
        read_ndjson_dir(tmp_path)
    (tmp_path / "Procedure.ndjson").write_text('{"resourceType": "Procedure"}\n{oops\n')
    with pytest.raises(SourceError, match="Procedure.ndjson line 2: not valid JSON"):
        read_ndjson_dir(tmp_path)
