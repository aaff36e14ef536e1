"""``map_patient``: one patient's FHIR resources in, model inputs with provenance out."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from .collect import ResourceInput, collect_resources
from .diagnosis import diagnosis
from .hb_grade import hb_grade
from .operation_time import operation_time
from .procedure import review_procedures
from .records import Record, code_pairs, latest_versions, resource_type, typed_record
from .recurrence import recurrences
from .references import FHIR_ID, referenced
from .resource_dates import dated_after
from .shapes import Kind, kind_of, unreadable
from .subjects import HomeServer, foreign_subject, home_server, infer_from_json
from .types import MappingParameters, PatientInputs, Problem, Provenance, Reason, Resource
from .valuesets import ValueSets, load_value_sets

#: The resource types the rules read; every other type is skipped without a note.
CLINICAL_TYPES = ("Procedure", "Observation", "Condition")

_REASON_ORDER = {reason: i for i, reason in enumerate(Reason)}


def map_patient(
    resources: Iterable[ResourceInput] | ResourceInput,
    patient_id: str | None = None,
    params: MappingParameters | None = None,
    value_sets: ValueSets | None = None,
    *,
    as_of: datetime | None = None,
    fhir_server: str | None = None,
) -> PatientInputs:
    """Map a patient's resources onto the model inputs; never raises for JSON-like input.

    ``resources`` may hold dicts, fhir.resources models and Bundles (flattened), or be one Bundle.
    Resources about another patient, or about no patient, are set aside with a note. When
    ``patient_id`` is None it is inferred (see :func:`infer_patient_id`). With ``as_of``, everything
    dated after it is set aside as not yet on record (a naive value is read as UTC). A record the
    rules read whose elements are not in FHIR R4 form is a ``unreadable-record`` exclusion. The
    result does not depend on the order of the resources. ``fhir_server`` is the server the
    resources came from (the hook's ``fhirServer``): an absolute subject reference to any other
    server is another patient (see :mod:`fhir_mappings.subjects` for the rule without one).
    """
    params = params if params is not None else MappingParameters()
    value_sets = value_sets if value_sets is not None else load_value_sets()
    dicts, ignored = collect_resources(resources)
    if isinstance(patient_id, str):
        patient_id = patient_id.removeprefix("Patient/") or None
    home = home_server(dicts, fhir_server)
    if patient_id is None:
        patient_id = infer_from_json(dicts, home)

    by_type, notes = _patient_records(dicts, patient_id, value_sets.relevant, home)
    ignored += notes
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    notes, later_ablations, unreadable_records = _screen(by_type, value_sets, as_of)
    ignored += notes
    procedures = by_type["Procedure"]
    observations = by_type["Observation"]
    conditions = by_type["Condition"]

    patient = (
        f"Patient/{patient_id}"
        if patient_id
        else "this patient (no patient id was given and the resources do not name one patient)"
    )
    review = review_procedures(procedures, value_sets, patient)
    ignored += review.ignored
    exclusions = list(review.exclusions)
    if unreadable_records:  # rare: the typical patient skips both comprehensions
        if any(kind is Kind.ABLATION for kind, _ in unreadable_records):
            # "No ablation found" would be false: one was found and could not be read.
            exclusions = [p for p in exclusions if p.reason is not Reason.NO_ABLATION]
        exclusions += [problem for _, problem in unreadable_records]
    index = review.index
    op_time = hb = None
    if index is not None:
        op_time, notes = operation_time(index, observations, params, value_sets)
        ignored += notes
        hb, notes = hb_grade(index, observations, params, value_sets)
        ignored += notes
        found, notes = recurrences(index, observations, conditions, value_sets)
        exclusions += found
        ignored += notes

    reference = index.reference if index is not None else None
    return PatientInputs(
        patient_id=patient_id,
        ablation=index.ablation if index is not None else None,
        operation_time=op_time,
        hb_grade=hb,
        diagnosis=diagnosis(conditions, value_sets, reference),
        exclusions=tuple(sorted(exclusions, key=_problem_order)),
        ignored=tuple(sorted(set(ignored))),
        ablations_after_as_of=tuple(sorted(later_ablations, key=repr)),
    )


def _screen(
    by_type: dict[str, list[Record]], value_sets: ValueSets, as_of: datetime | None
) -> tuple[list[str], list[Provenance], list[tuple[Kind, Problem]]]:
    """Remove (in place) what is dated after ``as_of``, then what is not in R4 form.

    Returns the notes for the first, the ablations among them, and a Problem for each of the
    second (none of them is read). A record set aside by date is not checked for its shape.
    """
    # One pass, each record's kind read once (was three passes and a dict of kinds: 17 -> 13 us
    # for the benchmark's typical patient, issue 12).
    notes: list[str] = []
    ablations: list[Provenance] = []
    unreadable_records: list[tuple[Kind, Problem]] = []
    for rtype, records in by_type.items():
        kept = []
        for record in records:
            kind = kind_of(record, value_sets)
            found = dated_after(rtype, record.resource, as_of) if as_of is not None else None
            if found is not None:
                element, time = found
                notes.append(f"{record.label}: {element} {time.text} is after the as-of date")
                if kind is Kind.ABLATION:
                    ablations.append(record.provenance(time.text))
                continue
            problem = unreadable(record, kind) if kind is not None else None
            if kind is not None and problem is not None:
                unreadable_records.append((kind, problem))
            else:
                kept.append(record)
        records[:] = kept
    return notes, ablations, unreadable_records


def _patient_records(
    dicts: list[Resource],
    patient_id: str | None,
    relevant: frozenset[tuple[str, str]],
    home: HomeServer,
) -> tuple[dict[str, list[Record]], list[str]]:
    """The patient's Procedures, Observations and Conditions that carry a code some rule reads,
    latest version of each, in a fixed order; notes for everything set aside."""
    notes: list[str] = []
    records: list[Record] = []
    untyped = 0
    for resource in dicts:
        # Skip early and silently what no rule reads (a chart's labs, other procedures): in a
        # busy record that is most resources, and the request path should not pay for them.
        rtype = resource.get("resourceType")
        if rtype not in CLINICAL_TYPES:
            untyped += resource_type(resource) is None
            continue
        codes = code_pairs(resource)
        if not relevant.isdisjoint(codes):
            records.append(typed_record(resource, rtype, codes))
    if untyped:
        notes.append(f"{untyped} JSON object(s) set aside: no valid resourceType")
    records, duplicates = latest_versions(records)
    notes += duplicates
    by_type: dict[str, list[Record]] = {t: [] for t in CLINICAL_TYPES}
    # Nearly every subject reads "Patient/<patient_id>", which foreign_subject() would parse to
    # exactly this patient on the home server: compared as text, 16 -> 12 us for the typical
    # patient (issue 12). Only for a valid FHIR id: "Patient/a/b" is no Patient reference.
    own = f"Patient/{patient_id}" if patient_id and FHIR_ID.fullmatch(patient_id) else None
    for record in sorted(records, key=_order):
        subject = record.resource.get("subject")
        if own is not None and isinstance(subject, dict) and subject.get("reference") == own:
            by_type[record.type].append(record)
            continue
        why = foreign_subject(record.resource, patient_id, home)
        if (
            why == "no subject"
            and _dstu2_patient(record) == ("Patient", patient_id)
            and home.owns(record.resource.get("patient"))
        ):
            why = None  # DSTU2 names a Condition's patient in 'patient': kept, reported unreadable
        if why is None:
            by_type[record.type].append(record)
        else:
            notes.append(f"{record.label}: {why}")
    return by_type, notes


def _order(record: Record) -> str:
    return record.order


def _dstu2_patient(record: Record) -> tuple[str, str] | None:
    return referenced(record.resource.get("patient")) if record.type == "Condition" else None


def _problem_order(problem: Problem) -> tuple[int, str, str, str]:
    # The full value breaks ties, so equal-looking problems never fall back to input order.
    return _REASON_ORDER[problem.reason], problem.message, problem.action, repr(problem.provenance)
