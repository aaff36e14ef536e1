"""The recalibration cohort: one row per patient, and every patient left out with the reason.

A row holds the two model inputs before coding (operation minutes, House-Brackmann grade), the
follow-up time from the end of the index ablation in months (days / the card's ``days_per_month``)
and whether it ended in a recurrence (1) or censoring (0).

From FHIR resources (a FHIR server or a Bulk Data export), per patient:

* **Index ablation**: the patient's *first* completed ablation. Later completed ablations are
  repeat procedures, i.e. outcomes, so they are set aside before the patient's resources go
  through :func:`fhir_mappings.map_patient`, the same mapping (and the same model-card parameters)
  the service scores with. Operation time and HB grade come from that mapping; a patient whose
  inputs cannot be derived, or whose HB grade is IV-VI, is left out with the mapping's reason.
* **Recurrence** (event = 1): the earliest of a recurrence Condition/Observation dated after the
  ablation (the mapping's ``recurrence-recorded`` rule: final status, not refuted, not answered
  "no"), a later treatment such as microvascular decompression (``later-treatment``), or a repeat
  ablation. The time is that record's date (onset, else recorded date; effective time; procedure
  end); a date without a time counts from the start of that day.
* **Censoring** (event = 0) at the last *HFS-specific assessment* (:mod:`.definitions`): the
  latest date after the ablation among final House-Brackmann grades, Observations in the HFS
  follow-up value set (final, amended or corrected; no dataAbsentReason) and Encounters (not
  planned, cancelled or entered-in-error; period end, else start) whose type, service type or
  reason is in that value set or whose reason is a hemifacial spasm diagnosis. Any other contact
  (an unrelated visit, a lab, a procedure) says nothing about the spasm and does not extend
  follow-up. A patient with no assessment after the ablation is left out (no follow-up). Dates
  after ``as_of`` (default: now) are ignored.
* **Window** (optional ``since``/``until``): patients whose index ablation ended outside these
  dates (in the ablation's own time zone) are left out, so a site can fit on one era.

From CSV: columns ``operation_minutes,hb_grade,time_months,event`` (optional ``patient_id``);
rows with unusable values are left out with the reason.
"""

from __future__ import annotations

import csv
import gettext
import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from cds_service.assessment import Assessor
from cds_service.model import ModelCard
from cds_service.model.engine import FloatArray
from cds_service.presentation.statement import NOT_SCORED_FALLBACK, NOT_SCORED_HEADLINES
from cds_service.recalibration.definitions import (
    CSV_DEFINITIONS,
    SIMULATED_DEFINITIONS,
    Definitions,
    FollowUpRules,
    follow_up_rules,
)
from cds_service.recalibration.errors import CohortError
from cds_service.recalibration.notes import ENGLISH, N_, Note
from cds_service.recalibration.sources import (
    SourceData,
    SourceKind,
    read_csv_file,
    subject_id,
)
from fhir_mappings import (
    HouseBrackmannGrade,
    MappingParameters,
    OperationTime,
    Problem,
    Reason,
    Resource,
    ValueSets,
    grade_from_roman,
    map_patient,
)
from fhir_mappings.fhir_time import FhirTime, parse_fhir_time
from fhir_mappings.resource_dates import observation_time, procedure_end

CSV_COLUMNS = ("operation_minutes", "hb_grade", "time_months", "event")
#: Reasons the cohort rules add to the mapping's :class:`fhir_mappings.Reason` codes.
NO_FOLLOW_UP = "no-follow-up"
OUTSIDE_WINDOW = "outside-date-range"
INVALID_ROW = "invalid-row"
MAPPING_EXCLUSION = "not-scorable"

_NOT_AN_ENCOUNTER = frozenset({"planned", "cancelled", "entered-in-error"})
_FINAL_OBSERVATION = frozenset({"final", "amended", "corrected"})
_OUTCOME_REASONS = frozenset({Reason.RECURRENCE_RECORDED, Reason.LATER_TREATMENT})
#: Why a patient is left out, by reason, for a reader of another language than English (msgids;
#: the mapping's reasons have theirs in :mod:`cds_service.presentation.statement`). The English
#: message follows in brackets: it names the resources and fields, the same in every language.
_LEFT_OUT_HEADLINES: dict[str, str] = {
    NO_FOLLOW_UP: N_("no follow-up after the ablation"),
    OUTSIDE_WINDOW: N_("the ablation is outside the requested dates"),
    INVALID_ROW: N_("the row cannot be read"),
    MAPPING_EXCLUSION: N_("not scorable"),
    **{reason.value: text for reason, text in NOT_SCORED_HEADLINES.items()},
}


@dataclass(frozen=True, slots=True)
class CohortRow:
    """One patient: inputs before coding, follow-up from the ablation, recurrence or censoring."""

    patient: str  # a patient id, or "row N" for a CSV without patient_id
    operation_minutes: float
    hb_grade: int
    time_months: float
    event: int  # 1 recurrence, 0 censored
    procedure_end: datetime | None = None  # end of the index ablation (FHIR sources)
    follow_up_end: datetime | None = None  # the recurrence or the last contact (FHIR sources)
    outcome: str = ""  # what ended follow-up, by reference only ("Condition/c1", "Encounter/e9")


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A candidate patient left out of the cohort, and why (ids and codes only, no free text)."""

    patient: str
    reason: str  # a fhir_mappings Reason value, or no-follow-up / invalid-row / not-scorable
    message: str


@dataclass(frozen=True)
class Cohort:
    """The cohort table, every patient left out, and where the data came from."""

    rows: tuple[CohortRow, ...]
    excluded: tuple[Exclusion, ...] = ()
    source: SourceKind = "csv"
    location: str = ""
    sha256: str = ""
    #: Patients in the source with no ablation Procedure at all (not candidates, only counted).
    not_candidates: int = 0
    notes: tuple[Note, ...] = field(default=())
    #: Outcome and censoring rules the rows were built with (None: the source kind's default).
    rules: Definitions | None = None

    @property
    def definitions(self) -> Definitions:
        if self.rules is not None:
            return self.rules
        return SIMULATED_DEFINITIONS if self.source == "simulated" else CSV_DEFINITIONS

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def operation_minutes(self) -> FloatArray:
        return np.array([r.operation_minutes for r in self.rows], dtype=np.float64)

    @property
    def hb_grade(self) -> FloatArray:
        return np.array([r.hb_grade for r in self.rows], dtype=np.float64)

    @property
    def time_months(self) -> FloatArray:
        return np.array([r.time_months for r in self.rows], dtype=np.float64)

    @property
    def event(self) -> FloatArray:
        return np.array([r.event for r in self.rows], dtype=np.float64)

    @property
    def n_events(self) -> int:
        return sum(r.event for r in self.rows)

    def covariates(self, card: ModelCard) -> FloatArray:
        """``(n, 2)``: X1 = operation over the card's cut (0/1), X2 = HB grade (1-3)."""
        x1 = (self.operation_minutes > card.operation_time.cut_minutes).astype(np.float64)
        return np.column_stack((x1, self.hb_grade))

    def date_range(self) -> dict[str, str] | None:
        """First and last index ablation and the end of follow-up (dates), when known."""
        ends = [r.procedure_end for r in self.rows if r.procedure_end is not None]
        follow = [r.follow_up_end for r in self.rows if r.follow_up_end is not None]
        if not ends or not follow:
            return None
        return {
            "first_procedure": min(ends).date().isoformat(),
            "last_procedure": max(ends).date().isoformat(),
            "follow_up_until": max(follow).date().isoformat(),
        }

    def exclusion_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(e.reason for e in self.excluded).items()))

    def report(self, words: gettext.NullTranslations = ENGLISH) -> str:
        """Every patient left out, one line each, after a one-line summary, in the language of
        ``words`` (:func:`.notes.catalogue`)."""
        _ = words.gettext
        summary = _(
            "cohort: %(patients)s patients, %(recurrences)s recurrences; %(left_out)s left out"
        )
        lines = [
            summary
            % {
                "patients": len(self.rows),
                "recurrences": self.n_events,
                "left_out": len(self.excluded),
            }
            + (
                _("; %(n)s without an ablation (not candidates)") % {"n": self.not_candidates}
                if self.not_candidates
                else ""
            )
        ]
        for e in self.excluded:
            message = e.message
            if words is not ENGLISH:
                headline = _LEFT_OUT_HEADLINES.get(e.reason, NOT_SCORED_FALLBACK)
                # i18n: a reason a patient is left out, then the English detail (ids, fields)
                message = _("%(reason)s (%(detail)s)") % {"reason": _(headline), "detail": message}
            line = _("left out %(patient)s: [%(code)s] %(message)s")
            lines.append("  " + line % {"patient": e.patient, "code": e.reason, "message": message})
        lines += ["  " + _("note: %(note)s") % {"note": n.say(words)} for n in self.notes]
        return "\n".join(lines)

    def to_csv(self) -> str:
        """The cohort table as CSV (readable back with :func:`cohort_from_csv_text`)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("patient_id", *CSV_COLUMNS))
        for r in self.rows:
            writer.writerow(
                (r.patient, repr(r.operation_minutes), r.hb_grade, repr(r.time_months), r.event)
            )
        return out.getvalue()


# -- from FHIR resources ----------------------------------------------------------------------------


def cohort_from_source(
    data: SourceData,
    card: ModelCard,
    value_sets: ValueSets,
    as_of: datetime | None = None,
    since: date | None = None,
    until: date | None = None,
    follow_up: FollowUpRules | None = None,
) -> Cohort:
    """Build the cohort from resources read by one of the FHIR readers."""
    return cohort_from_resources(
        data.resources,
        card,
        value_sets,
        as_of=as_of,
        since=since,
        until=until,
        follow_up=follow_up,
        source=data.kind,
        location=data.location,
        sha256=data.sha256,
    )


def cohort_from_resources(
    resources: Iterable[Resource],
    card: ModelCard,
    value_sets: ValueSets,
    *,
    as_of: datetime | None = None,
    since: date | None = None,
    until: date | None = None,
    source: SourceKind = "fhir",
    location: str = "",
    sha256: str = "",
    follow_up: FollowUpRules | None = None,
) -> Cohort:
    """One row per patient with an ablation Procedure; every other candidate left out with why."""
    now = as_of or datetime.now(UTC)
    rules = follow_up or follow_up_rules(value_sets)
    params = Assessor(card, value_sets).mapping_parameters  # the rules the service applies
    by_patient: dict[str, list[Resource]] = {}
    patients: set[str] = set()
    for resource in resources:
        if resource.get("resourceType") == "Patient" and isinstance(resource.get("id"), str):
            patients.add(resource["id"])
            continue
        pid = subject_id(resource)
        if pid is not None:
            patients.add(pid)
            by_patient.setdefault(pid, []).append(resource)
    rows: list[CohortRow] = []
    excluded: list[Exclusion] = []
    not_candidates = 0
    for pid in sorted(patients):
        mine = by_patient.get(pid, [])
        if not any(_is_ablation(r, value_sets) for r in mine):
            not_candidates += 1
            continue
        outcome = _patient_row(pid, mine, card, params, rules, now, (since, until))
        if isinstance(outcome, CohortRow):
            rows.append(outcome)
        else:
            excluded.append(outcome)
    return Cohort(
        tuple(rows),
        tuple(excluded),
        source,
        location,
        sha256,
        not_candidates=not_candidates,
        rules=rules.definitions(),
    )


def _is_ablation(resource: Resource, value_sets: ValueSets) -> bool:
    return (
        resource.get("resourceType") == "Procedure"
        and value_sets.ablation_procedure.match(resource.get("code")) is not None
    )


def _patient_row(
    pid: str,
    resources: list[Resource],
    card: ModelCard,
    params: MappingParameters,
    rules: FollowUpRules,
    as_of: datetime,
    window: tuple[date | None, date | None] = (None, None),
) -> CohortRow | Exclusion:
    value_sets = rules.value_sets
    # The first completed ablation is the index; later ones are repeat procedures (outcomes).
    completed = [
        (r, found[0])
        for r in resources
        if _is_ablation(r, value_sets)
        and r.get("status") == "completed"
        and (found := procedure_end(r)) is not None
    ]
    repeats: list[tuple[Resource, FhirTime]] = []
    if completed:
        first = min(completed, key=lambda c: (c[1].earliest, c[1].latest))[1]
        repeats = [(r, t) for r, t in completed if t.is_after(first)]
        repeat_ids = {id(r) for r, _ in repeats}
        resources = [r for r in resources if id(r) not in repeat_ids]
    inputs = map_patient(resources, pid, params, value_sets)
    ablation = inputs.ablation
    if ablation is None:
        problem = inputs.exclusions[0]
        return Exclusion(pid, problem.reason.value, problem.message)
    for value in (inputs.operation_time, inputs.hb_grade):
        if isinstance(value, Problem):
            return Exclusion(pid, value.reason.value, value.message)
    assert isinstance(inputs.operation_time, OperationTime)
    assert isinstance(inputs.hb_grade, HouseBrackmannGrade)
    other = [p for p in inputs.exclusions if p.reason not in _OUTCOME_REASONS]
    if other:
        return Exclusion(pid, other[0].reason.value, other[0].message)

    end = ablation.ended_at
    since, until = window
    if (since is not None and end.date() < since) or (until is not None and end.date() > until):
        return Exclusion(
            pid,
            OUTSIDE_WINDOW,
            f"the index ablation {ablation.provenance.reference} ended {end.date().isoformat()}, "
            "outside the requested date range",
        )
    if end >= as_of:
        return Exclusion(
            pid,
            NO_FOLLOW_UP,
            f"the index ablation {ablation.provenance.reference} ended after the as-of time",
        )
    events: list[tuple[datetime, str]] = []
    for problem in inputs.exclusions:  # recurrence recorded, later treatment
        prov = problem.provenance
        dated = parse_fhir_time(prov.recorded, end) if prov is not None else None
        if prov is not None and dated is not None:
            events.append((dated.earliest, _plain(prov.resource_type, prov.id)))
    for resource, time in repeats:
        events.append((time.earliest, _plain("Procedure", resource.get("id"))))
    events = [e for e in events if end < e[0] <= as_of]
    if events:
        when, what = min(events)
        event = 1
    else:
        contact = _last_assessment(resources, end, as_of, rules)
        if contact is None:
            return Exclusion(
                pid,
                NO_FOLLOW_UP,
                f"no HFS-specific assessment (House-Brackmann grade, or an Encounter or "
                f"Observation in the HFS follow-up value set) dated after the ablation "
                f"{ablation.provenance.reference} ended: the follow-up time is unknown",
            )
        when, what = contact
        event = 0
    months = (when - end).total_seconds() / 86400.0 / card.days_per_month
    return CohortRow(
        pid,
        inputs.operation_time.minutes,
        inputs.hb_grade.grade,
        months,
        event,
        procedure_end=end,
        follow_up_end=when,
        outcome=what,
    )


def _last_assessment(
    resources: Sequence[Resource], end: datetime, as_of: datetime, rules: FollowUpRules
) -> tuple[datetime, str] | None:
    best: tuple[datetime, str] | None = None
    for resource in resources:
        rtype = resource.get("resourceType")
        if not _is_assessment(resource, rules):
            continue
        time = _assessment_time(resource, end)
        if time is None or not end < time.earliest <= as_of:
            continue
        if best is None or time.earliest > best[0]:
            best = (time.earliest, _plain(str(rtype), resource.get("id")))
    return best


def _is_assessment(resource: Resource, rules: FollowUpRules) -> bool:
    """An HFS-specific assessment: HB grade, or a follow-up coded Observation or Encounter."""
    rtype = resource.get("resourceType")
    sets = rules.value_sets
    if rtype == "Observation":
        if resource.get("status") not in _FINAL_OBSERVATION or "dataAbsentReason" in resource:
            return False
        code = resource.get("code")
        return (
            sets.hb_grade_observation.match(code) is not None
            or rules.follow_up.match(code) is not None
        )
    if rtype == "Encounter":
        if resource.get("status") in _NOT_AN_ENCOUNTER:
            return False
        concepts = [*_concepts(resource.get("type")), *_concepts(resource.get("serviceType"))]
        reasons = _concepts(resource.get("reasonCode"))
        return any(rules.follow_up.match(c) is not None for c in [*concepts, *reasons]) or any(
            sets.hemifacial_spasm_condition.match(c) is not None for c in reasons
        )
    return False


def _concepts(value: object) -> list[object]:
    if isinstance(value, list):
        return list(value)
    return [value] if isinstance(value, dict) else []


def _assessment_time(resource: Resource, end: datetime) -> FhirTime | None:
    if resource.get("resourceType") == "Observation":
        return observation_time(resource, end)
    period = resource.get("period")
    if not isinstance(period, dict):
        return None
    return parse_fhir_time(period.get("end"), end) or parse_fhir_time(period.get("start"), end)


def _plain(rtype: str, rid: object) -> str:
    return f"{rtype}/{rid}" if isinstance(rid, str) else f"{rtype} (no id)"


# -- from CSV -------------------------------------------------------------------------------------


def cohort_from_csv(path: str | Path, card: ModelCard) -> Cohort:
    """Read a cohort CSV (``operation_minutes,hb_grade,time_months,event``; ``patient_id`` optional)."""
    text, digest = read_csv_file(path)
    return cohort_from_csv_text(text, card, location=Path(path).name, sha256=digest)


def cohort_from_csv_text(
    text: str, card: ModelCard, *, location: str = "", sha256: str = ""
) -> Cohort:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise CohortError(
            f"{location or 'CSV'}: missing column(s) {', '.join(missing)}; expected "
            f"{','.join(CSV_COLUMNS)} (and optionally patient_id)"
        )
    rows: list[CohortRow] = []
    excluded: list[Exclusion] = []
    for number, raw in enumerate(reader, start=2):  # line 1 is the header
        record = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        label = record.get("patient_id") or f"row {number}"
        outcome = _csv_row(label, record, card)
        if isinstance(outcome, CohortRow):
            rows.append(outcome)
        else:
            excluded.append(outcome)
    return Cohort(tuple(rows), tuple(excluded), "csv", location, sha256)


def _csv_row(label: str, record: Mapping[str, str], card: ModelCard) -> CohortRow | Exclusion:
    minutes = _number(record["operation_minutes"])
    time = _number(record["time_months"])
    grade_text = record["hb_grade"]
    grade = grade_from_roman(grade_text) or _number(grade_text)
    event = _number(record["event"])
    if minutes is None or time is None or grade is None or event is None:
        blank = [c for c in CSV_COLUMNS if _number(record[c]) is None and c != "hb_grade"]
        if grade is None:
            blank.append("hb_grade")
        return Exclusion(label, INVALID_ROW, f"not a number: {', '.join(sorted(blank))}")
    lo, hi = card.operation_time.valid_minutes
    if not lo <= minutes <= hi:
        return Exclusion(
            label,
            Reason.DURATION_OUT_OF_RANGE.value,
            f"operation time {minutes:g} min is outside {lo:g}-{hi:g} min",
        )
    g_lo, g_hi = card.hb_grade.model_grades
    if grade != int(grade) or not 1 <= grade <= 6:
        return Exclusion(label, INVALID_ROW, "hb_grade must be a whole number from 1 to 6")
    if not g_lo <= grade <= g_hi:
        return Exclusion(
            label,
            Reason.HB_OUTSIDE_MODEL.value,
            f"House-Brackmann grade {int(grade)} is outside the model's range {g_lo}-{g_hi}",
        )
    if event not in (0.0, 1.0):
        return Exclusion(label, INVALID_ROW, "event must be 1 (recurrence) or 0 (censored)")
    if not time > 0:
        return Exclusion(label, NO_FOLLOW_UP, "time_months must be greater than 0")
    return CohortRow(label, minutes, int(grade), time, int(event))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def cohort_from_arrays(
    operation_minutes: ArrayLike,
    hb_grade: ArrayLike,
    time_months: ArrayLike,
    event: ArrayLike,
    *,
    source: SourceKind = "simulated",
    location: str = "",
    sha256: str = "",
) -> Cohort:
    """A cohort from columns (simulations, tests); values are trusted as given."""
    columns = [
        np.asarray(c, dtype=np.float64).reshape(-1)
        for c in (operation_minutes, hb_grade, time_months, event)
    ]
    rows = tuple(
        CohortRow(f"row {i + 1}", float(m), int(g), float(t), int(e))
        for i, (m, g, t, e) in enumerate(zip(*columns, strict=True))
    )
    return Cohort(rows, (), source, location, sha256)
