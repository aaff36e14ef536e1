"""The index ablation, and the procedures that rule scoring out (repeat ablation, later MVD)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from .fhir_time import FhirTime, time_key
from .frozen import fast_init
from .records import Record
from .resource_dates import EndSource, procedure_end, procedure_period
from .types import AblationProcedure, Code, Problem, Reason
from .valuesets import ValueSets

#: Statuses that mean the procedure did not happen: such records are ignored outright.
VOID_STATUSES = frozenset({"entered-in-error", "not-done"})


@fast_init
@dataclass(frozen=True, slots=True)
class IndexAblation:
    """The most recent completed ablation and the span its end can mean (for time windows)."""

    record: Record
    end: FhirTime
    ablation: AblationProcedure

    @property
    def reference(self) -> datetime:
        """The instant other dates are compared with (date-only values take its time zone)."""
        return self.end.earliest


@fast_init
@dataclass(frozen=True, slots=True)
class ProcedureReview:
    index: IndexAblation | None
    exclusions: tuple[Problem, ...]
    ignored: tuple[str, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class _Dated:
    record: Record
    code: Code
    end: FhirTime
    source: EndSource


def review_procedures(
    procedures: Sequence[Record], value_sets: ValueSets, patient: str
) -> ProcedureReview:
    """Find the index ablation among the patient's Procedures and what rules scoring out.

    ``patient`` names the patient in messages ("Patient/p1").
    """
    completed: list[tuple[Record, Code]] = []
    unfinished: list[Record] = []
    ignored: list[str] = []
    for record in procedures:
        code = value_sets.ablation_procedure.first(record.codes)
        if code is None:
            continue
        if record.status == "completed":
            completed.append((record, code))
        elif record.status in VOID_STATUSES:
            ignored.append(f"{record.label}: ablation with status {record.shown_status} ignored")
        else:
            unfinished.append(record)

    if not completed:
        problem = _not_completed(unfinished) if unfinished else _no_ablation(value_sets, patient)
        return ProcedureReview(None, (problem,), tuple(ignored))
    ignored += [f"{r.label}: ablation with status {r.shown_status} ignored" for r in unfinished]

    dated, undated = _date(completed)
    if undated:
        return ProcedureReview(None, tuple(_date_missing(r) for r in undated), tuple(ignored))

    index_entry = max(dated, key=lambda d: (time_key(d.end), d.end.has_time, d.record.order))
    index = _index(index_entry)
    exclusions: list[Problem] = []
    for other in dated:
        if other is index_entry:
            continue
        if index.end.is_after(other.end):
            exclusions.append(_repeat(index, other))
        else:
            ignored.append(
                f"{other.record.label}: completed ablation ending at the same time or on the same "
                f"date as {index.record.label}; treated as a second record of the same procedure"
            )
    later, notes = _later_treatments(procedures, index, value_sets)
    return ProcedureReview(index, tuple(exclusions + later), tuple(ignored + notes))


def _date(completed: list[tuple[Record, Code]]) -> tuple[list[_Dated], list[Record]]:
    """Parse each end; date-only ends are read in the time zone of the latest timed end."""
    first = [(record, code, procedure_end(record.resource)) for record, code in completed]
    timed = [found[0].earliest for _, _, found in first if found is not None and found[0].has_time]
    # Tie-break on the UTC offset so the chosen zone does not depend on input order.
    reference = max(timed, key=lambda t: (t, t.utcoffset())) if timed else None
    dated: list[_Dated] = []
    undated: list[Record] = []
    for record, code, found in first:
        if found is not None and not found[0].has_time and reference is not None:
            found = procedure_end(record.resource, reference)
        if found is None:
            undated.append(record)
        else:
            dated.append(_Dated(record, code, found[0], found[1]))
    return dated, undated


def _index(entry: _Dated) -> IndexAblation:
    start, _ = procedure_period(entry.record.resource, entry.end.earliest)
    ablation = AblationProcedure(
        provenance=entry.record.provenance(entry.end.text),
        code=entry.code,
        ended_at=entry.end.earliest,
        started_at=start.earliest if start is not None else None,
        ended_at_has_time=entry.end.has_time,
        ended_at_source=entry.source,
    )
    return IndexAblation(entry.record, entry.end, ablation)


def _later_treatments(
    procedures: Sequence[Record], index: IndexAblation, value_sets: ValueSets
) -> tuple[list[Problem], list[str]]:
    problems: list[Problem] = []
    notes: list[str] = []
    for record in procedures:
        code = value_sets.later_treatment_procedure.first(record.codes)
        if code is None or value_sets.ablation_procedure.has_any(record.codes):
            continue  # an ablation code wins: that record is an ablation, handled above
        if record.status != "completed":
            notes.append(f"{record.label}: later treatment with status {record.shown_status}")
            continue
        found = procedure_end(record.resource, index.reference)
        if found is None:
            notes.append(f"{record.label}: later treatment without a usable date")
        elif found[0].is_after(index.end):
            problems.append(
                Problem(
                    Reason.LATER_TREATMENT,
                    f"{record.label} ({code.system}|{code.code}, ended {found[0].text}) is a later "
                    f"treatment after the ablation {index.record.label} (ended {index.end.text}); "
                    "the ablation's recurrence risk no longer applies.",
                    "No risk is calculated after a later treatment. If "
                    f"{record.label} was recorded in error, mark it entered-in-error.",
                    record.provenance(found[0].text),
                )
            )
    return problems, notes


def _no_ablation(value_sets: ValueSets, patient: str) -> Problem:
    return Problem(
        Reason.NO_ABLATION,
        f"No completed facial-nerve radiofrequency ablation Procedure was found for {patient}.",
        "Record the ablation as a Procedure with status 'completed', performedPeriod start and end "
        f"times, and one of the codes {value_sets.ablation_procedure.describe()}.",
    )


def _not_completed(unfinished: list[Record]) -> Problem:
    # Name the most recent first; the rest are listed so nothing is silently dropped.
    def key(r: Record) -> tuple[tuple[datetime, datetime], str]:
        found = procedure_end(r.resource)
        return time_key(found[0] if found else None), r.order

    ranked = sorted(unfinished, key=key, reverse=True)
    main = ranked[0]
    others = "".join(f"; also {r.label} has status {r.shown_status}" for r in ranked[1:])
    return Problem(
        Reason.PROCEDURE_NOT_COMPLETED,
        f"The ablation {main.label} has status {main.shown_status}{others}; only a completed "
        "ablation can be scored.",
        "The risk is scored once the Procedure is recorded as completed, with performedPeriod "
        "start and end times.",
        main.provenance(),
    )


def _date_missing(record: Record) -> Problem:
    return Problem(
        Reason.PROCEDURE_DATE_MISSING,
        f"The completed ablation {record.label} has no usable performedPeriod or "
        "performedDateTime, so the ablations cannot be ordered and the time since the ablation "
        "is unknown.",
        f"Record performedPeriod.start and performedPeriod.end (with times) on {record.label}.",
        record.provenance(),
    )


def _repeat(index: IndexAblation, earlier: _Dated) -> Problem:
    return Problem(
        Reason.REPEAT_PROCEDURE,
        f"{index.record.label} (ended {index.end.text}) is a repeat ablation: the earlier "
        f"completed ablation {earlier.record.label} ended {earlier.end.text}. No risk is "
        "calculated after a repeat procedure.",
        f"If {earlier.record.label} was recorded in error, mark it entered-in-error.",
        index.record.provenance(index.end.text),
    )
