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
    period = get_dict(resource, "effectivePeriod") or {}
    for value in (
        resource.get("effectiveDateTime"),
        period.get("start"),
        resource.get("effectiveInstant"),
        resource.get("issued"),
    ):
        parsed = parse_fhir_time(value, reference)
        if parsed is not None:
            return parsed
    return None


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
