"""Which element dates each kind of resource, parsed into :class:`FhirTime`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from .fhir_time import FhirTime, parse_fhir_time
from .json_access import get_dict
from .types import Resource

EndSource = Literal["performedPeriod.end", "performedDateTime", "performedPeriod.start"]


def procedure_period(
    resource: Resource, reference: datetime | None = None
) -> tuple[FhirTime | None, FhirTime | None]:
    """``performedPeriod`` start and end (each None when absent or malformed)."""
    period = get_dict(resource, "performedPeriod")
    if period is None:
        return None, None
    start = parse_fhir_time(period.get("start"), reference)
    return start, parse_fhir_time(period.get("end"), reference)


def procedure_end(
    resource: Resource, reference: datetime | None = None
) -> tuple[FhirTime, EndSource] | None:
    """When the procedure ended: period end, else performedDateTime, else period start."""
    period = get_dict(resource, "performedPeriod") or {}
    end = parse_fhir_time(period.get("end"), reference)
    if end is not None:
        return end, "performedPeriod.end"
    performed = parse_fhir_time(resource.get("performedDateTime"), reference)
    if performed is not None:
        return performed, "performedDateTime"
    start = parse_fhir_time(period.get("start"), reference)
    return (start, "performedPeriod.start") if start is not None else None


def observation_time(resource: Resource, reference: datetime | None = None) -> FhirTime | None:
    """effectiveDateTime, else effectivePeriod.start, else effectiveInstant, else issued."""
    effective = observation_effective(resource, reference)
    if effective is not None:
        return effective
    return parse_fhir_time(resource.get("issued"), reference)


def condition_onset(resource: Resource, reference: datetime | None = None) -> FhirTime | None:
    """onsetDateTime, else onsetPeriod.start."""
    onset = parse_fhir_time(resource.get("onsetDateTime"), reference)
    if onset is not None:
        return onset
    period = get_dict(resource, "onsetPeriod") or {}
    return parse_fhir_time(period.get("start"), reference)


def condition_recorded(resource: Resource, reference: datetime | None = None) -> FhirTime | None:
    """recordedDate, else the onset: when the condition entered the record."""
    recorded = parse_fhir_time(resource.get("recordedDate"), reference)
    return recorded if recorded is not None else condition_onset(resource, reference)


def dated_after(rtype: str, resource: Resource, as_of: datetime) -> tuple[str, FhirTime] | None:
    """The element dating the resource certainly after ``as_of``, so it was not on record then.

    Procedures count by when they ended, Observations by effective time or issued, Conditions by
    onset or recordedDate. A date-only value is read in the time zone of ``as_of``, and one that
    covers ``as_of`` (the same day) is not after it. Undated resources are never after.
    """
    # Runs on every record the rules read: no lists built, each date parsed only when needed.
    if rtype == "Procedure":
        end = procedure_end(resource, as_of)
        return (end[1], end[0]) if end is not None and end[0].earliest > as_of else None
    if rtype == "Observation":
        time = observation_effective(resource, as_of)
        if time is not None and time.earliest > as_of:
            return "effective", time
        time = parse_fhir_time(resource.get("issued"), as_of)
        return ("issued", time) if time is not None and time.earliest > as_of else None
    if rtype == "Condition":
        time = condition_onset(resource, as_of)
        if time is not None and time.earliest > as_of:
            return "onset", time
        time = parse_fhir_time(resource.get("recordedDate"), as_of)
        return ("recordedDate", time) if time is not None and time.earliest > as_of else None
    return None


def observation_effective(resource: Resource, reference: datetime | None = None) -> FhirTime | None:
    """effectiveDateTime, else effectivePeriod.start, else effectiveInstant (not issued)."""
    parsed = parse_fhir_time(resource.get("effectiveDateTime"), reference)
    if parsed is None:
        period = resource.get("effectivePeriod")
        if isinstance(period, dict):
            parsed = parse_fhir_time(period.get("start"), reference)
        if parsed is None:
            parsed = parse_fhir_time(resource.get("effectiveInstant"), reference)
    return parsed
