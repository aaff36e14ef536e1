"""Recurrence of hemifacial spasm already on record after the index ablation."""

from __future__ import annotations

from collections.abc import Sequence

from .condition_status import CLINICAL_SYSTEM, status_codes, voided
from .fhir_time import FhirTime, parse_fhir_time
from .json_access import coding_pairs, token
from .procedure import IndexAblation
from .records import FINAL_STATUSES, Record
from .resource_dates import condition_onset, observation_time
from .types import Code, Problem, Reason
from .valuesets import ValueSets

#: Answers meaning "no": SNOMED CT No, HL7 v2 Yes/No indicator N.
NEGATIVE_ANSWERS = frozenset(
    {
        ("http://snomed.info/sct", "373067005"),
        ("http://terminology.hl7.org/CodeSystem/v2-0136", "N"),
    }
)
RECURRENT_CLINICAL_STATUSES = frozenset({"recurrence", "relapse"})


def recurrences(
    index: IndexAblation,
    observations: Sequence[Record],
    conditions: Sequence[Record],
    value_sets: ValueSets,
) -> tuple[list[Problem], list[str]]:
    """One Problem per Observation or Condition recording a recurrence after the ablation, and
    a note for each recurrence record set aside."""
    found = [_observation(r, index, value_sets) for r in observations]
    found += [_condition(r, index, value_sets) for r in conditions]
    problems = [f for f in found if isinstance(f, Problem)]
    notes = [f for f in found if isinstance(f, str)]
    return problems, notes


def _observation(
    record: Record, index: IndexAblation, value_sets: ValueSets
) -> Problem | str | None:
    code = value_sets.recurrence_finding.first(record.codes)
    if code is None:
        return None
    if record.status not in FINAL_STATUSES:
        return f"{record.label}: recurrence finding with status {record.shown_status}"
    if _negative(record):
        return f"{record.label}: recurrence finding answered 'no'"
    time = observation_time(record.resource, index.reference)
    return _place(record, code, [time] if time is not None else [], index)


def _condition(record: Record, index: IndexAblation, value_sets: ValueSets) -> Problem | str | None:
    resource = record.resource
    code = value_sets.recurrence_finding.first(record.codes)
    if code is None:  # else: hemifacial spasm whose clinical status says it came back
        code = value_sets.hemifacial_spasm_condition.first(record.codes)
        clinical = status_codes(resource, "clinicalStatus", CLINICAL_SYSTEM)
        if code is None or not clinical & RECURRENT_CLINICAL_STATUSES:
            return None
    void = voided(resource)
    if void is not None:
        return f"{record.label}: recurrence with verificationStatus {token(void)}"
    onset = condition_onset(resource, index.reference)
    recorded = parse_fhir_time(resource.get("recordedDate"), index.reference)
    return _place(record, code, [t for t in (onset, recorded) if t is not None], index)


def _place(
    record: Record, code: Code, times: list[FhirTime], index: IndexAblation
) -> Problem | str:
    """A Problem if any recorded time is after the ablation, else a note saying why not."""
    if not times:
        return f"{record.label}: recurrence without a usable date"
    after = [t for t in times if t.is_after(index.end)]
    if not after:
        return f"{record.label}: recurrence dated before {index.record.label} ended"
    when = after[0]
    return Problem(
        Reason.RECURRENCE_RECORDED,
        f"{record.label} records a recurrence of hemifacial spasm ({code.system}|{code.code}) "
        f"dated {when.text}, after the ablation {index.record.label} ended "
        f"({index.end.text}).",
        f"No recurrence risk is calculated once a recurrence is recorded. If {record.label} "
        "was recorded in error, mark it entered-in-error.",
        record.provenance(when.text),
    )


def _negative(record: Record) -> bool:
    """The finding's value explicitly says no recurrence."""
    resource = record.resource
    if resource.get("valueBoolean") is False:
        return True
    answers = coding_pairs(resource.get("valueCodeableConcept"))
    return any(pair in NEGATIVE_ANSWERS for pair in answers)
