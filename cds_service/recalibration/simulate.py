"""Draw follow-up outcomes from a model card: for tests, the sandbox and the validation demo.

Outcomes follow the card exactly: a patient's recurrence time solves
``H_ref(t) * exp(lp(x) - lp_ref) = -log(U)`` (U uniform) on the card's piecewise-linear cumulative
hazard; no recurrence within the horizon means none is drawn. Follow-up ends at the last contact,
the earliest of loss to follow-up (exponential, ``loss_per_month``), the end of the study
(``follow_up_months``, default the horizon) and ``as_of`` (a sandbox never writes future dates).
The time is the recurrence if it comes first, else the last contact (censored).

:func:`simulate_follow_up` adds the outcomes to patients given as FHIR resources, as FHIR R4: a
recurrence **Condition** linked to the Encounter at which it was diagnosed, and for every patient an
HFS follow-up **Encounter** whose ``period.end`` is the last assessment (or the recurrence visit):
the cohort extraction censors at the last HFS-specific assessment, which this Encounter is.

Instants are written to the second, in the time zone of the ablation, and the cohort table is
computed from the written instants, so extracting the resources gives back the same table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cds_service.assessment import Assessor
from cds_service.model import ModelCard, RecurrenceModel
from cds_service.model.engine import FloatArray
from cds_service.recalibration.cohort import (
    Cohort,
    CohortRow,
    Exclusion,
    cohort_from_arrays,
)
from fhir_mappings import (
    HouseBrackmannGrade,
    OperationTime,
    Resource,
    ValueSets,
    infer_patient_id,
    load_value_sets,
    map_patient,
)

RECURRENCE_SYSTEM = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-rfa"
RECURRENCE_CODE = "hfs-recurrence"
FOLLOW_UP_CODING = {
    "system": "http://snomed.info/sct",
    "code": "390906007",
    "display": "Follow-up encounter",
}
#: In the packaged ``hfs_follow_up`` value set: what makes the visit an HFS assessment.
HFS_FOLLOW_UP_CODING = {
    "system": RECURRENCE_SYSTEM,
    "code": "hfs-follow-up",
    "display": "Hemifacial spasm follow-up assessment after radiofrequency ablation",
}
HFS_REASON_CODING = {
    "system": "http://snomed.info/sct",
    "code": "13753008",
    "display": "Hemifacial spasm",
}
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
#: Synthetic covariate mix for :func:`simulate_cohort` (not from the paper).
HB_GRADE_MIX = (0.3, 0.45, 0.25)
MINUTES_MEAN, MINUTES_SD, MINUTES_RANGE = 33.0, 10.0, (10.0, 90.0)


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Drawn follow-up, one value per patient (months from the end of the ablation)."""

    time_months: FloatArray
    event: NDArray[np.int_]
    recurrence_months: FloatArray  # inf when no recurrence within the horizon
    last_contact_months: FloatArray


def draw_outcomes(
    card: ModelCard,
    operation_minutes: ArrayLike,
    hb_grade: ArrayLike,
    *,
    seed: int | np.random.Generator,
    loss_per_month: float = 0.02,
    follow_up_months: ArrayLike | None = None,
) -> Outcomes:
    """Recurrence or censoring for each patient, drawn from ``card``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    model = RecurrenceModel(card)
    rel = np.exp(model.relative_log_hazard(operation_minutes, hb_grade))
    n = rel.shape[0] if rel.ndim else 1
    rel = np.broadcast_to(rel, (n,))
    months = np.array([k.month for k in card.baseline_knots], dtype=np.float64)
    cumhaz = -np.log([k.survival for k in card.baseline_knots])
    target = rng.exponential(size=n) / rel  # H_ref at the recurrence time
    recurrence = np.where(target <= cumhaz[-1], np.interp(target, cumhaz, months), np.inf)
    recurrence = np.where(recurrence <= card.horizon_months, recurrence, np.inf)
    end = (
        np.full(n, card.horizon_months)
        if follow_up_months is None
        else np.broadcast_to(np.asarray(follow_up_months, dtype=np.float64), (n,))
    )
    loss = rng.exponential(size=n) / loss_per_month if loss_per_month > 0 else np.full(n, np.inf)
    last_contact = np.minimum(loss, end)
    event = (recurrence <= last_contact).astype(np.int_)
    time = np.where(event == 1, recurrence, last_contact)
    return Outcomes(time, event, recurrence, last_contact)


def simulate_cohort(
    card: ModelCard,
    n: int,
    *,
    seed: int,
    loss_per_month: float = 0.02,
    follow_up_months: float | None = None,
) -> Cohort:
    """A synthetic cohort: covariates from a plausible mix, outcomes from ``card``."""
    rng = np.random.default_rng(seed)
    minutes = np.clip(np.round(rng.normal(MINUTES_MEAN, MINUTES_SD, n)), *MINUTES_RANGE)
    grades = rng.choice([1, 2, 3], size=n, p=HB_GRADE_MIX)
    out = draw_outcomes(
        card,
        minutes,
        grades,
        seed=rng,
        loss_per_month=loss_per_month,
        follow_up_months=follow_up_months,
    )
    return cohort_from_arrays(
        minutes, grades, out.time_months, out.event, location=f"n={n} seed={seed}"
    )


@dataclass(frozen=True)
class SimulatedFollowUp:
    """Outcomes added to FHIR patients: the table, the new resources, and who was skipped."""

    cohort: Cohort
    resources: tuple[Resource, ...]
    skipped: tuple[Exclusion, ...]


def simulate_follow_up(
    card: ModelCard,
    patients: Mapping[str, Sequence[Resource]] | Iterable[Sequence[Resource]],
    *,
    seed: int,
    value_sets: ValueSets | None = None,
    loss_per_month: float = 0.02,
    follow_up_months: float | None = None,
    as_of: datetime | None = None,
    id_prefix: str = "",
) -> SimulatedFollowUp:
    """Draw outcomes for scorable patients and return them as Condition and Encounter resources.

    ``patients`` maps patient id -> that patient's resources (or is a sequence of per-patient
    resource lists; the id is then inferred). Patients the service could not score (missing
    inputs, HB IV-VI, recurrence already recorded, ...) are skipped with the mapping's reason.
    """
    sets = value_sets if value_sets is not None else load_value_sets()
    params = Assessor(card, sets).mapping_parameters
    now = as_of or datetime.now(UTC)
    items = (
        list(patients.items())
        if isinstance(patients, Mapping)
        else [(infer_patient_id(list(r)) or f"#{i + 1}", r) for i, r in enumerate(patients)]
    )
    chosen: list[tuple[str, float, int, datetime]] = []
    skipped: list[Exclusion] = []
    for pid, resources in items:
        inputs = map_patient(list(resources), pid, params, sets)
        ablation = inputs.ablation
        if not inputs.scorable or ablation is None:
            problem = inputs.problems[0] if inputs.problems else None
            reason = problem.reason.value if problem else "not-scorable"
            skipped.append(Exclusion(pid, reason, problem.message if problem else "not scorable"))
            continue
        if ablation.ended_at >= now:
            skipped.append(Exclusion(pid, "no-follow-up", "the ablation ends after as_of"))
            continue
        assert isinstance(inputs.operation_time, OperationTime)
        assert isinstance(inputs.hb_grade, HouseBrackmannGrade)
        chosen.append(
            (pid, inputs.operation_time.minutes, inputs.hb_grade.grade, ablation.ended_at)
        )
    if not chosen:
        return SimulatedFollowUp(Cohort((), tuple(skipped), "simulated"), (), tuple(skipped))

    days = card.days_per_month
    elapsed = np.array([(now - end).total_seconds() / 86400.0 / days for *_, end in chosen])
    horizon_end = card.horizon_months if follow_up_months is None else follow_up_months
    out = draw_outcomes(
        card,
        [m for _, m, _, _ in chosen],
        [g for _, _, g, _ in chosen],
        seed=seed,
        loss_per_month=loss_per_month,
        follow_up_months=np.minimum(horizon_end, elapsed),
    )
    rows: list[CohortRow] = []
    written: list[Resource] = []
    for i, (pid, minutes, grade, end) in enumerate(chosen):
        seconds = max(1, round(float(out.time_months[i]) * days * 86400.0))
        when = end + timedelta(seconds=seconds)
        event = int(out.event[i])
        encounter = _encounter(_id(id_prefix, pid, "follow-up"), pid, when)
        written.append(encounter)
        outcome = f"Encounter/{encounter['id']}"
        if event:
            condition = _recurrence(_id(id_prefix, pid, "recurrence"), pid, when, encounter["id"])
            written.append(condition)
            outcome = f"Condition/{condition['id']}"
        rows.append(
            CohortRow(
                pid,
                minutes,
                grade,
                seconds / 86400.0 / days,
                event,
                procedure_end=end,
                follow_up_end=when,
                outcome=outcome,
            )
        )
    cohort = Cohort(tuple(rows), tuple(skipped), "simulated", f"seed={seed}")
    return SimulatedFollowUp(cohort, tuple(written), tuple(skipped))


def transaction(resources: Iterable[Resource]) -> Resource:
    """A FHIR transaction Bundle that PUTs each resource at its id (idempotent loading)."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }


def _encounter(rid: str, pid: str, when: datetime) -> Resource:
    return {
        "resourceType": "Encounter",
        "id": rid,
        "status": "finished",
        "class": {"system": _ACT_CODE, "code": "AMB", "display": "ambulatory"},
        "type": [
            {
                "coding": [FOLLOW_UP_CODING, HFS_FOLLOW_UP_CODING],
                "text": "Follow-up after facial nerve RFA",
            }
        ],
        "reasonCode": [{"coding": [HFS_REASON_CODING]}],
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": _iso(when - timedelta(minutes=20)), "end": _iso(when)},
    }


def _recurrence(rid: str, pid: str, when: datetime, encounter_id: str) -> Resource:
    return {
        "resourceType": "Condition",
        "id": rid,
        "clinicalStatus": {"coding": [{"system": _CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": _VERIFICATION, "code": "confirmed"}]},
        "code": {
            "coding": [
                {
                    "system": RECURRENCE_SYSTEM,
                    "code": RECURRENCE_CODE,
                    "display": "Recurrence of hemifacial spasm after radiofrequency ablation",
                }
            ]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{encounter_id}"},
        "onsetDateTime": _iso(when),
        "recordedDate": _iso(when),
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _id(prefix: str, pid: str, suffix: str) -> str:
    """A valid FHIR id (at most 64 of [A-Za-z0-9-.]) for this patient's outcome resource."""
    rid = f"{prefix}{pid}-{suffix}"
    if len(rid) <= 64:
        return rid
    digest = hashlib.sha256(rid.encode("utf-8")).hexdigest()[:16]
    return f"{rid[: 64 - 17 - len(suffix) - 1]}-{digest}-{suffix}"
