"""Model input X1 before coding: how many minutes the index ablation took."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from .fhir_time import parse_fhir_time, time_key
from .formatting import number
from .json_access import get_dict
from .procedure import IndexAblation
from .records import FINAL_STATUSES, Record
from .references import referenced
from .resource_dates import observation_time, procedure_period
from .types import MappingParameters, OperationTime, Problem, Provenance, Reason
from .units import quantity_minutes
from .valuesets import ValueSets


def operation_time(
    index: IndexAblation,
    observations: Sequence[Record],
    params: MappingParameters,
    value_sets: ValueSets,
) -> tuple[OperationTime | Problem, list[str]]:
    """From performedPeriod when both ends have a time of day, else a duration Observation."""
    start, end = procedure_period(index.record.resource)
    if start is not None and end is not None and start.has_time and end.has_time:
        provenance = index.record.provenance(f"{start.text}/{end.text}")
        where = f"{index.record.label} performedPeriod"
        if end.earliest <= start.earliest:
            return (
                Problem(
                    Reason.DURATION_INVALID,
                    f"{where} ends ({end.text}) at or before it starts ({start.text}).",
                    f"Correct performedPeriod.start and .end on {index.record.label}.",
                    provenance,
                ),
                [],
            )
        minutes = (end.earliest - start.earliest).total_seconds() / 60.0
        fix = f"Check and correct performedPeriod.start and .end on {index.record.label}."
        return _checked(minutes, "performedPeriod", where, fix, provenance, params), []
    return _from_observation(index, observations, params, value_sets)


def _from_observation(
    index: IndexAblation,
    observations: Sequence[Record],
    params: MappingParameters,
    value_sets: ValueSets,
) -> tuple[OperationTime | Problem, list[str]]:
    notes: list[str] = []
    usable: list[Record] = []
    for record in observations:
        if value_sets.operation_duration_observation.first(record.codes) is None:
            continue
        if not _part_of(record, index.record):
            notes.append(f"{record.label}: operation duration not partOf {index.record.label}")
        elif record.status not in FINAL_STATUSES:
            notes.append(f"{record.label}: operation duration with status {record.shown_status}")
        elif record.resource.get("dataAbsentReason") is not None:
            notes.append(f"{record.label}: operation duration with a dataAbsentReason")
        else:
            usable.append(record)
    if not usable:
        return _period_without_times(index, value_sets), notes

    # Several: the most recently recorded one (a correction is recorded after the original).
    def recency(r: Record) -> tuple[tuple[datetime, datetime], str]:
        return time_key(observation_time(r.resource, index.reference)), r.order

    chosen = max(usable, key=recency)
    when = observation_time(chosen.resource, index.reference)
    provenance = chosen.provenance(when.text if when is not None else None)
    quantity = get_dict(chosen.resource, "valueQuantity")
    if quantity is None:
        return (
            Problem(
                Reason.DURATION_INVALID,
                f"{chosen.label} has no valueQuantity; the operation duration must be a Quantity.",
                f"Record the value of {chosen.label} as a UCUM Quantity in min, h or s.",
                provenance,
            ),
            notes,
        )
    minutes = quantity_minutes(quantity, f"{chosen.label} valueQuantity", provenance)
    if isinstance(minutes, Problem):
        return minutes, notes
    fix = f"Check and correct the value of {chosen.label}."
    where = f"{chosen.label} valueQuantity"
    return _checked(minutes, "duration-observation", where, fix, provenance, params), notes


def _checked(
    minutes: float,
    source: Literal["performedPeriod", "duration-observation"],
    where: str,
    fix: str,
    provenance: Provenance,
    params: MappingParameters,
) -> OperationTime | Problem:
    if minutes <= 0:
        return Problem(
            Reason.DURATION_INVALID,
            f"{where} gives an operation time of {number(minutes)} minutes; it must be positive.",
            fix,
            provenance,
        )
    low, high = params.min_operation_minutes, params.max_operation_minutes
    if not low <= minutes <= high:
        return Problem(
            Reason.DURATION_OUT_OF_RANGE,
            f"{where} gives an operation time of {number(minutes)} minutes, outside the accepted "
            f"{number(low)}–{number(high)} minutes; treated as a data error.",
            fix,
            provenance,
        )
    return OperationTime(minutes, source, provenance)


def _period_without_times(index: IndexAblation, value_sets: ValueSets) -> Problem:
    resource = index.record.resource
    start, end = procedure_period(resource)
    performed = parse_fhir_time(resource.get("performedDateTime"))
    recorded = [
        f"{name} {value.text}"
        for name, value in (
            ("performedPeriod.start", start),
            ("performedPeriod.end", end),
            ("performedDateTime", performed),
        )
        if value is not None
    ]
    label = index.record.label
    codes = value_sets.operation_duration_observation.describe() or "an operation-duration code"
    return Problem(
        Reason.PERIOD_WITHOUT_TIMES,
        f"{label} records {' and '.join(recorded)} but not start and end times, and no usable "
        f"operation-duration Observation partOf {label} was found.",
        f"Record performedPeriod.start and performedPeriod.end with times of day on {label}, or "
        f"an Observation with one of the codes {codes}, status 'final', partOf {label} and a "
        "UCUM Quantity in min, h or s.",
        index.record.provenance(index.end.text),
    )


def _part_of(observation: Record, procedure: Record) -> bool:
    """Observation.partOf names the procedure (relative, versioned or absolute reference)."""
    if procedure.id is None:
        return False
    parts = observation.resource.get("partOf")
    if not isinstance(parts, list):
        return False
    return any(referenced(part) == ("Procedure", procedure.id) for part in parts)
