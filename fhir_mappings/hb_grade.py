"""Model input X2: the first accepted House-Brackmann grade recorded soon after the ablation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from .fhir_time import FhirTime, time_key
from .formatting import ROMAN, number, roman
from .frozen import fast_init
from .json_access import coding_pairs, token
from .procedure import IndexAblation
from .records import FINAL_STATUSES, Record
from .resource_dates import observation_time
from .types import HouseBrackmannGrade, MappingParameters, Problem, Reason
from .valuesets import ValueSets

PRELIMINARY_STATUSES = frozenset({"registered", "preliminary"})


@fast_init
@dataclass(frozen=True, slots=True)
class _Grade:
    """A grade Observation placed in time relative to the end of the index ablation."""

    record: Record
    time: FhirTime
    low: float  # fewest hours after the ablation ended that the recorded time can mean
    high: float  # most hours

    def within(self, hours: float) -> bool:
        """Recorded (possibly, for a date-only time) 0 to ``hours`` after the ablation ended."""
        return self.high >= 0 and self.low <= hours

    def key(self) -> tuple[tuple[datetime, datetime], str]:
        return time_key(self.time), self.record.order


def hb_grade(
    index: IndexAblation,
    observations: Sequence[Record],
    params: MappingParameters,
    value_sets: ValueSets,
) -> tuple[HouseBrackmannGrade | Problem, list[str]]:
    """The earliest accepted grade 0-72 h after the ablation (else up to 7 days), or why not."""
    accepted: list[_Grade] = []
    preliminary: list[_Grade] = []
    notes: list[str] = []
    for record in observations:
        if value_sets.hb_grade_observation.first(record.codes) is None:
            continue
        status = record.status
        if status not in FINAL_STATUSES and status not in PRELIMINARY_STATUSES:
            notes.append(f"{record.label}: House-Brackmann grade with status {record.shown_status}")
            continue
        if record.resource.get("dataAbsentReason") is not None:
            notes.append(f"{record.label}: House-Brackmann grade with a dataAbsentReason")
            continue
        time = observation_time(record.resource, index.reference)
        if time is None:
            notes.append(f"{record.label}: House-Brackmann grade without a usable date")
            continue
        low, high = time.hours_since(index.end)
        grade = _Grade(record, time, low, high)
        (accepted if status in FINAL_STATUSES else preliminary).append(grade)

    # The fallback window is read only when the primary one is empty; one grade needs no min().
    primary = [g for g in accepted if g.within(params.hb_primary_window_hours)]
    if primary:
        return _read(_earliest(primary), index, params, value_sets, primary=True), notes
    fallback = [g for g in accepted if g.within(params.hb_fallback_window_hours)]
    if fallback:
        return _read(_earliest(fallback), index, params, value_sets, primary=False), notes
    pending = [g for g in preliminary if g.within(params.hb_fallback_window_hours)]
    if pending:
        return _preliminary_only(pending, index, params), notes
    return _none_in_window(accepted, index, params, value_sets), notes


def _earliest(grades: list[_Grade]) -> _Grade:
    return grades[0] if len(grades) == 1 else min(grades, key=_Grade.key)


def _read(
    chosen: _Grade,
    index: IndexAblation,
    params: MappingParameters,
    value_sets: ValueSets,
    *,
    primary: bool,
) -> HouseBrackmannGrade | Problem:
    """The chosen Observation's value decides: a grade, or the Problem with it."""
    record = chosen.record
    provenance = record.provenance(chosen.time.text)
    grade = _grade_value(record, value_sets.house_brackmann_code_system)
    if isinstance(grade, str):
        system = value_sets.house_brackmann_code_system
        return Problem(
            Reason.HB_UNSUPPORTED_VALUE,
            f"{record.label}, the first House-Brackmann grade after {index.record.label}, has "
            f"{grade}; accepted are valueCodeableConcept with a code I–VI from {system}, or "
            "valueInteger 1–6.",
            f"Correct the value of {record.label}: a coding from {system} (I–VI) or an "
            "integer 1–6.",
            provenance,
        )
    if grade > params.max_model_hb_grade:
        return Problem(
            Reason.HB_OUTSIDE_MODEL,
            f"The first House-Brackmann grade after {index.record.label} is {roman(grade)} "
            f"({record.label}, {chosen.time.text}); the model was derived on grades "
            f"I–{roman(params.max_model_hb_grade)}, so no risk is calculated.",
            f"Facial palsy (House-Brackmann {roman(grade)}): protect the eye (lubricating drops "
            "by day, ointment and taping at night, urgent eye review if it is red or painful) and "
            "arrange an early review of facial nerve function.",
            provenance,
        )
    return HouseBrackmannGrade(grade, max(chosen.low, 0.0), primary, provenance)


def _grade_value(record: Record, hb_system: str) -> int | str:
    """The grade 1-6, or a description of the unsupported value for the message."""
    resource = record.resource
    concept = resource.get("valueCodeableConcept")
    if isinstance(concept, dict):
        codes = [code for system, code in coding_pairs(concept) if system == hb_system]
        for code in codes:
            if code in ROMAN:
                return ROMAN.index(code) + 1
        if codes:
            return f"valueCodeableConcept code {token(codes[0])}, which is not a grade I–VI"
        return f"a valueCodeableConcept without a coding from {hb_system}"
    if "valueInteger" in resource:
        value = resource["valueInteger"]
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON does not tell 2 from 2.0
        if isinstance(value, bool) or not isinstance(value, int):
            return "a valueInteger that is not an integer"
        if 1 <= value <= len(ROMAN):
            return value
        return f"valueInteger {value}, outside 1–6"
    found = sorted(k for k in resource if isinstance(k, str) and k.startswith("value"))
    return f"value type {token(found[0])}" if found else "no value"


def _preliminary_only(
    pending: list[_Grade], index: IndexAblation, params: MappingParameters
) -> Problem:
    pending.sort(key=_Grade.key)
    listed = ", ".join(
        f"{g.record.label} (status {g.record.shown_status}, {g.time.text})" for g in pending
    )
    return Problem(
        Reason.HB_PRELIMINARY_ONLY,
        f"Only preliminary House-Brackmann grades were recorded within "
        f"{number(params.hb_fallback_window_hours)} h after {index.record.label}: {listed}.",
        "Record the House-Brackmann grade with status 'final' once it is confirmed.",
        pending[0].record.provenance(pending[0].time.text),
    )


def _none_in_window(
    accepted: list[_Grade], index: IndexAblation, params: MappingParameters, value_sets: ValueSets
) -> Problem:
    primary, fallback = params.hb_primary_window_hours, params.hb_fallback_window_hours
    message = (
        f"No accepted House-Brackmann grade was recorded 0–{number(primary)} h (or up to "
        f"{number(fallback)} h) after {index.record.label} ended ({index.end.text})."
    )
    if accepted:
        ranked = sorted(accepted, key=_Grade.key)
        outside = ", ".join(f"{g.record.label} ({_when(g)})" for g in ranked)
        message += f" Grades recorded outside that window: {outside}."
    codes = value_sets.hb_grade_observation.describe() or "a House-Brackmann code"
    return Problem(
        Reason.NO_HB_IN_WINDOW,
        message,
        f"Record the House-Brackmann grade 0–{number(primary)} h after the procedure as an "
        f"Observation with one of the codes {codes}, status 'final', and a value from "
        f"{value_sets.house_brackmann_code_system} (I–VI) or an integer 1–6.",
        index.record.provenance(index.end.text),
    )


def _when(grade: _Grade) -> str:
    if grade.high < 0:
        return "before the procedure ended"
    return f"{number(grade.low / 24.0)} days after"
