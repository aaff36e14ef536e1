"""``assess()``: the one pipeline from a patient's FHIR resources to a recurrence-risk assessment.

The CDS Hooks service, the CLI and the SMART app all call :meth:`Assessor.assess`; none of them maps or
scores anything themselves. Everything that can be prepared once (model card, value sets, mapping
rules) is prepared in the constructor, so a call does only per-patient work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from cds_service.model import ModelCard, RecurrenceModel, Tier
from fhir_mappings import (
    HouseBrackmannGrade,
    MappingParameters,
    OperationTime,
    PatientInputs,
    Problem,
    Provenance,
    Reason,
    ValueSets,
    map_patient,
)
from fhir_mappings.frozen import fast_init

#: Below this many months since the ablation the conditional risk equals the plain risk for all
#: practical purposes, so it is not reported (about two weeks).
CONDITIONAL_FROM_MONTHS = 0.5

#: Records dated this far after "as of" still count: clocks of the EHR, its FHIR server and this
#: service drift apart by seconds to minutes, and a grade recorded "in the future" by that much is
#: on record now. Negligible for a date-level ``hfs-cds score --at``.
CLOCK_SKEW = timedelta(minutes=5)


class Status(StrEnum):
    SCORED = "scored"
    NOT_SCORED = "not-scored"  # an ablation is on record but the model must not or cannot score it
    NOT_APPLICABLE = "not-applicable"  # no ablation in the model's horizon: nothing to say


class NotApplicable(StrEnum):
    """Why an assessment is not applicable: a code, worded per language by the presentation layer
    (the figures it needs are on the assessment: ``as_of``, ``months_since_procedure``)."""

    NO_ABLATION = "no-ablation"  # none on record (as of ``as_of`` when one was recorded later)
    BEYOND_HORIZON = "beyond-horizon"  # the last one ended more than the horizon ago


@fast_init
@dataclass(frozen=True, slots=True)
class RiskPoint:
    """Risk of recurrence by ``month`` after the ablation, with the scenario range."""

    month: float
    risk: float
    low: float
    high: float


@fast_init
@dataclass(frozen=True, slots=True)
class ConditionalRisk:
    """Risk of recurring by ``to_month`` for a patient still recurrence-free at ``from_month``."""

    from_month: float
    to_month: float
    risk: float
    low: float
    high: float


@fast_init
@dataclass(frozen=True, slots=True)
class Assessment:
    status: Status
    inputs: PatientInputs
    model: ModelCard
    as_of: datetime
    months_since_procedure: float | None = None
    risks: tuple[RiskPoint, ...] = ()
    conditional: ConditionalRisk | None = None
    #: The tier of the 12-month point estimate: it labels the risk (clinical-presentation.md §2).
    estimate_tier: Tier | None = None
    #: The tier of the upper end of the 12-month range: it sets the follow-up schedule, because
    #: under-calling risk is the harmful error. Higher than the estimate tier when coding-sensitive.
    schedule_tier: Tier | None = None
    x1: float | None = None  # the coded covariates actually scored
    x2: float | None = None
    not_applicable: NotApplicable | None = None

    @property
    def not_applicable_as_of(self) -> bool:
        """Whether "no ablation" holds only as of ``as_of`` (one is recorded after it)."""
        return self.not_applicable is NotApplicable.NO_ABLATION and bool(
            self.inputs.ablations_after_as_of
        )

    @property
    def not_applicable_because(self) -> str | None:
        """The reason in English, for the JSON (``notApplicableBecause``) and logs; people read it
        worded in their language (:func:`cds_service.presentation.present`)."""
        if self.not_applicable is NotApplicable.NO_ABLATION:
            because = "no ablation on record"
            if self.not_applicable_as_of:
                because += f" as of {moment(self.as_of)}"
            return because
        if self.not_applicable is NotApplicable.BEYOND_HORIZON:
            return (
                f"the last ablation ended {self.months_since_procedure or 0.0:.1f} months ago, "
                f"beyond the model's {self.model.horizon_months:g}-month horizon"
            )
        return None

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.inputs.problems

    @property
    def operation_time(self) -> OperationTime | None:
        value = self.inputs.operation_time
        return value if isinstance(value, OperationTime) else None

    @property
    def hb_grade(self) -> HouseBrackmannGrade | None:
        value = self.inputs.hb_grade
        return value if isinstance(value, HouseBrackmannGrade) else None

    def risk_at(self, month: float) -> RiskPoint:
        for point in self.risks:
            if point.month == month:
                return point
        raise KeyError(month)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable assessment (CLI ``--json``, the card extension, the app's JSON)."""
        out: dict[str, Any] = {
            "status": self.status.value,
            "asOf": self.as_of.isoformat(),
            "model": {
                "id": self.model.id,
                "version": self.model.version,
                "sha256": self.model.sha256,
            },
        }
        if self.inputs.patient_id:
            out["patient"] = f"Patient/{self.inputs.patient_id}"
        if self.inputs.ablation:
            out["procedure"] = {
                **_provenance_json(self.inputs.ablation.provenance),
                "end": self.inputs.ablation.ended_at.isoformat(),
            }
        if self.months_since_procedure is not None:
            out["monthsSinceProcedure"] = round(self.months_since_procedure, 3)
        if self.risks:
            out["risks"] = [
                {"month": _month(p.month), "risk": _r(p.risk), "low": _r(p.low), "high": _r(p.high)}
                for p in self.risks
            ]
        if self.conditional:
            c = self.conditional
            out["conditionalRisk"] = {
                "fromMonth": round(c.from_month, 3),
                "toMonth": _month(c.to_month),
                "risk": _r(c.risk),
                "low": _r(c.low),
                "high": _r(c.high),
            }
        if self.estimate_tier and self.schedule_tier:
            out["tier"] = self.estimate_tier.id
            out["scheduleTier"] = self.schedule_tier.id
        inputs: dict[str, Any] = {}
        if self.operation_time:
            inputs["operationMinutes"] = {
                "value": round(self.operation_time.minutes, 1),
                **({"coded": self.x1} if self.x1 is not None else {}),
                "source": self.operation_time.source,
                "provenance": _provenance_json(self.operation_time.provenance),
            }
        if self.hb_grade:
            inputs["houseBrackmannGrade"] = {
                "value": self.hb_grade.grade,
                **({"coded": self.x2} if self.x2 is not None else {}),
                "hoursAfterProcedure": round(self.hb_grade.hours_after_procedure, 1),
                "provenance": _provenance_json(self.hb_grade.provenance),
            }
        if inputs:
            out["inputs"] = inputs
        if self.problems:
            out["problems"] = [
                {
                    "reason": p.reason.value,
                    "message": p.message,
                    "action": p.action,
                    **({"provenance": _provenance_json(p.provenance)} if p.provenance else {}),
                }
                for p in self.problems
            ]
        if self.not_applicable_because:
            out["notApplicableBecause"] = self.not_applicable_because
        return out


class Assessor:
    """Holds what every assessment needs, prepared once; :meth:`assess` is the pipeline."""

    def __init__(self, card: ModelCard, value_sets: ValueSets) -> None:
        self.card = card
        self.model = RecurrenceModel(card)
        self.value_sets = value_sets
        self.mapping_parameters = MappingParameters(
            hb_primary_window_hours=card.hb_grade.primary_window_hours,
            hb_fallback_window_hours=card.hb_grade.fallback_window_hours,
            min_operation_minutes=card.operation_time.valid_minutes[0],
            max_operation_minutes=card.operation_time.valid_minutes[1],
            max_model_hb_grade=card.hb_grade.model_grades[1],
        )
        # Report months plus the horizon (the tier is read there), scored in one call.
        months = sorted({*card.report_months, card.horizon_months})
        self._months = tuple(float(m) for m in months)
        self._horizon_index = months.index(card.horizon_months)
        self._report_index = [months.index(m) for m in card.report_months]

    def assess(
        self,
        resources: Iterable[Any],
        patient_id: str | None = None,
        as_of: datetime | None = None,
        fhir_server: str | None = None,
    ) -> Assessment:
        """Map the patient's resources as of ``as_of`` (default now), then score them or say
        exactly why not. Everything dated after ``as_of`` is ignored, as not yet on record, but
        for :data:`CLOCK_SKEW`: an EHR clock a little ahead of ours must not hide a grade just
        recorded. ``fhir_server``: where the resources came from (the hook's ``fhirServer``); a
        subject on another server is another patient."""
        now = as_of or datetime.now(UTC)
        inputs = map_patient(
            resources,
            patient_id,
            self.mapping_parameters,
            self.value_sets,
            as_of=now + CLOCK_SKEW,
            fhir_server=fhir_server,
        )

        def result(status: Status, **details: Any) -> Assessment:
            return Assessment(status, inputs, self.card, now, **details)

        if inputs.ablation is None:
            if any(p.reason is not Reason.NO_ABLATION for p in inputs.exclusions):
                return result(Status.NOT_SCORED)  # e.g. an ablation not yet completed
            # As of a date before a recorded ablation, the reason says "as of" (not_applicable_as_of).
            return result(Status.NOT_APPLICABLE, not_applicable=NotApplicable.NO_ABLATION)
        elapsed_days = (now - inputs.ablation.ended_at).total_seconds() / 86400.0
        months_since = max(0.0, elapsed_days / self.card.days_per_month)
        if months_since > self.card.horizon_months:
            return result(
                Status.NOT_APPLICABLE,
                months_since_procedure=months_since,
                not_applicable=NotApplicable.BEYOND_HORIZON,
            )
        if not inputs.scorable:
            x1, x2 = self._coded(inputs)
            return result(Status.NOT_SCORED, months_since_procedure=months_since, x1=x1, x2=x2)
        return self._score(inputs, now, months_since)

    def _coded(self, inputs: PatientInputs) -> tuple[float | None, float | None]:
        """X1 and X2 for display beside inputs that were derived although the patient is not scored."""
        ot, hb = inputs.operation_time, inputs.hb_grade
        x1 = self.model.coded_x1(ot.minutes) if isinstance(ot, OperationTime) else None
        x2 = float(hb.grade) if isinstance(hb, HouseBrackmannGrade) else None
        return x1, x2

    def _score(self, inputs: PatientInputs, now: datetime, months_since: float) -> Assessment:
        assert isinstance(inputs.operation_time, OperationTime)
        assert isinstance(inputs.hb_grade, HouseBrackmannGrade)
        minutes, grade = inputs.operation_time.minutes, inputs.hb_grade.grade
        model = self.model
        horizon = self.card.horizon_months
        with_conditional = CONDITIONAL_FROM_MONTHS <= months_since < horizon
        # One pass: the months (horizon last), then the conditional column when it applies.
        point, low, high = model.patient_risks(
            minutes, grade, self._months, months_since if with_conditional else None
        )
        risks = tuple(
            RiskPoint(self._months[i], point[i], low[i], high[i]) for i in self._report_index
        )
        conditional = None
        if with_conditional:
            conditional = ConditionalRisk(months_since, horizon, point[-1], low[-1], high[-1])
        return Assessment(
            Status.SCORED,
            inputs=inputs,
            model=self.card,
            as_of=now,
            months_since_procedure=months_since,
            risks=risks,
            conditional=conditional,
            estimate_tier=model.tier(point[self._horizon_index]),
            schedule_tier=model.tier(high[self._horizon_index]),
            x1=model.coded_x1(minutes),
            x2=float(grade),
        )


def moment(when: datetime) -> str:
    """A date when the moment is midnight (``--at 2026-04-30``), else the minute with its offset."""
    if when.time() == datetime.min.time():
        return when.date().isoformat()
    return when.isoformat(timespec="minutes")


def _r(value: float) -> float:
    return round(value, 4)


def _month(value: float) -> int | float:
    """Whole months as integers in JSON (``3``, not ``3.0``)."""
    return int(value) if value.is_integer() else value


def _provenance_json(p: Provenance) -> dict[str, str]:
    out = {"resourceType": p.resource_type, "reference": p.reference}
    if p.id:
        out["id"] = p.id
    if p.version:
        out["versionId"] = p.version
    if p.recorded:
        out["date"] = p.recorded
    return out
