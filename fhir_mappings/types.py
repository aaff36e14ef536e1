"""Typed results of mapping FHIR resources onto the model inputs.

Every derived input carries the provenance of the resource it came from; every input that cannot be
derived is a :class:`Problem` that says precisely what is wrong and how to record it. Nothing here
knows about HTTP, Flask or the risk model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from .frozen import fast_init

#: A FHIR resource as parsed JSON.
Resource = dict[str, Any]


class Reason(StrEnum):
    """Why an input could not be derived or why the patient must not be scored (stable codes)."""

    NO_ABLATION = "no-ablation"
    #: A resource the rules read is not in FHIR R4 form (e.g. STU3's string clinicalStatus); it
    #: may be a recurrence, a later treatment or the ablation itself, so nothing is scored.
    UNREADABLE_RECORD = "unreadable-record"
    PROCEDURE_NOT_COMPLETED = "procedure-not-completed"
    PROCEDURE_DATE_MISSING = "procedure-date-missing"
    PERIOD_WITHOUT_TIMES = "period-without-times"
    DURATION_INVALID = "duration-invalid"
    DURATION_OUT_OF_RANGE = "duration-out-of-range"
    DURATION_UNSUPPORTED_UNIT = "duration-unsupported-unit"
    NO_HB_IN_WINDOW = "no-hb-in-window"
    HB_PRELIMINARY_ONLY = "hb-preliminary-only"
    HB_OUTSIDE_MODEL = "hb-outside-model"
    HB_UNSUPPORTED_VALUE = "hb-unsupported-value"
    REPEAT_PROCEDURE = "repeat-procedure"
    RECURRENCE_RECORDED = "recurrence-recorded"
    LATER_TREATMENT = "later-treatment"


@dataclass(frozen=True, slots=True)
class Code:
    """One coding that matched a value set."""

    system: str
    code: str
    display: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a value came from: resource type, id and version, and the date that mattered."""

    resource_type: str
    id: str | None
    version: str | None = None
    recorded: str | None = None  # the FHIR date/time used, exactly as written in the resource

    @property
    def reference(self) -> str:
        """A relative FHIR reference, versioned when the version is known."""
        if self.id is None:
            return f"{self.resource_type} (no id)"
        ref = f"{self.resource_type}/{self.id}"
        return f"{ref}/_history/{self.version}" if self.version else ref


@fast_init
@dataclass(frozen=True, slots=True)
class Problem:
    """An input that could not be derived, or a fact that rules scoring out."""

    reason: Reason
    message: str  # what is wrong, naming the resource; never free-text clinical content
    action: str  # how a clinician or integrator records the data so the patient can be scored
    provenance: Provenance | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class AblationProcedure:
    """The index procedure: the most recent completed facial-nerve RFA."""

    provenance: Provenance
    code: Code
    ended_at: datetime  # timezone-aware; the model's time origin
    started_at: datetime | None
    ended_at_has_time: bool  # False when only a date was recorded (ended_at: start of that day)
    # Which element gave ended_at: performedPeriod.end, else performedDateTime, else the start.
    ended_at_source: Literal[
        "performedPeriod.end", "performedDateTime", "performedPeriod.start"
    ] = "performedPeriod.end"


@fast_init
@dataclass(frozen=True, slots=True)
class OperationTime:
    """Model input X1 before coding: how long the ablation took."""

    minutes: float
    source: Literal["performedPeriod", "duration-observation"]
    provenance: Provenance


@fast_init
@dataclass(frozen=True, slots=True)
class HouseBrackmannGrade:
    """Model input X2: the first accepted post-ablation House-Brackmann grade (1-6)."""

    grade: int
    hours_after_procedure: float
    within_primary_window: bool  # in the primary window (default 72 h), not the fallback
    provenance: Provenance


@fast_init
@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Hemifacial spasm on record (context for the card, not a model input)."""

    code: Code
    provenance: Provenance


@dataclass(frozen=True, slots=True)
class MappingParameters:
    """Rules the model card sets for the mapping (passed in: mappings never read configuration)."""

    hb_primary_window_hours: float = 72.0
    hb_fallback_window_hours: float = 168.0
    min_operation_minutes: float = 5.0
    max_operation_minutes: float = 180.0
    max_model_hb_grade: int = 3


@fast_init
@dataclass(frozen=True, slots=True)
class PatientInputs:
    """Everything the mapping found for one patient."""

    patient_id: str | None
    ablation: AblationProcedure | None
    operation_time: OperationTime | Problem | None  # None only when there is no index ablation
    hb_grade: HouseBrackmannGrade | Problem | None  # None only when there is no index ablation
    diagnosis: Diagnosis | None
    exclusions: tuple[Problem, ...] = ()  # facts that rule scoring out (repeat RFA, recurrence…)
    ignored: tuple[str, ...] = field(default=())  # resources set aside and why (ids only, no PHI)
    #: Completed ablations set aside because they ended after the as-of date (not yet on record).
    ablations_after_as_of: tuple[Provenance, ...] = ()

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Every reason the patient cannot be scored, exclusions first."""
        inputs = tuple(v for v in (self.operation_time, self.hb_grade) if isinstance(v, Problem))
        return self.exclusions + inputs

    @property
    def scorable(self) -> bool:
        return (
            self.ablation is not None
            and isinstance(self.operation_time, OperationTime)
            and isinstance(self.hb_grade, HouseBrackmannGrade)
            and not self.problems
        )
