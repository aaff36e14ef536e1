"""FHIR R4 shapes of the elements the rules read, on the few resources one patient's rules use.

A resource written in another FHIR version is never skipped in silence: STU3's string
clinicalStatus, its ``notPerformed`` flag, R5's ``occurrence[x]``, a choice element without its type
suffix... each make the record unreadable, with a message naming the element and the likely version.
Only the elements a rule reads are checked, and only on records that carry a code some rule looks
for: the request path pays per element, never for the whole prefetch.

How: the complex elements read (CodeableConcept, Quantity) are validated with fhir.resources' R4B
models (imported by version: the package default is R5), memoised by their JSON text because the
same status concepts arrive on every request. Two things those models do not see are checked here
first: JSON types (pydantic reads ``"false"`` as a boolean and a number as a dateTime) and the
elements of other versions (so the message can name the version). Dates are read by the mapping's
own parser, which accepts what the rules accept (e.g. no seconds); a date counts as unreadable when
a date element is present but the rule can read none of the dates it falls back on.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.quantity import Quantity
from pydantic import BaseModel, ValidationError

from .condition_status import CLINICAL_SYSTEM, VERIFICATION_SYSTEM, status_codes
from .fhir_time import parse_fhir_time
from .records import Record
from .recurrence import RECURRENT_CLINICAL_STATUSES
from .resource_dates import condition_onset, observation_time, procedure_end
from .types import Problem, Reason, Resource
from .valuesets import ValueSets


class Kind(StrEnum):
    """What a record is to the rules (decides which elements are read)."""

    ABLATION = "ablation"
    LATER_TREATMENT = "later treatment"
    HB_GRADE = "House-Brackmann grade"
    DURATION = "operation duration"
    RECURRENCE = "recurrence"
    HFS = "hemifacial spasm condition"


_BLOCKS = {
    Kind.ABLATION: "An ablation that cannot be read blocks scoring.",
    Kind.LATER_TREATMENT: "A recurrence or later treatment that cannot be read blocks scoring.",
    Kind.RECURRENCE: "A recurrence or later treatment that cannot be read blocks scoring.",
    Kind.HFS: "A hemifacial spasm Condition that cannot be read blocks scoring: it may record a "
    "recurrence.",
    Kind.HB_GRADE: "A House-Brackmann grade that cannot be read blocks scoring: it may be the "
    "first grade after the ablation.",
    Kind.DURATION: "An operation duration that cannot be read blocks scoring.",
}

R4_PROCEDURE_STATUSES = frozenset(
    {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
     "entered-in-error", "unknown"}
)  # fmt: skip
R4_OBSERVATION_STATUSES = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled",
     "entered-in-error", "unknown"}
)  # fmt: skip
#: Procedure statuses of earlier versions: (likely version, the R4 status that means the same).
_OLD_PROCEDURE_STATUSES = {
    "aborted": ("FHIR STU3 or DSTU2", "stopped"),
    "suspended": ("FHIR STU3", "on-hold"),
}
#: Condition clinicalStatus codes of STU3 (a plain code there) and DSTU2, for version hints.
_STU3_CLINICAL = frozenset({"active", "recurrence", "inactive", "remission", "resolved"})
_DSTU2_CLINICAL = frozenset({"active", "relapse", "remission", "resolved"})
_R4_CLINICAL = frozenset({"active", "recurrence", "relapse", "inactive", "remission", "resolved"})
_OLD_VERIFICATION = frozenset(
    {"provisional", "differential", "confirmed", "refuted", "entered-in-error", "unknown"}
)
_R4_VERIFICATION = frozenset(
    {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
)
_R5_OCCURRENCE = ("occurrenceDateTime", "occurrencePeriod", "occurrenceString", "occurrenceAge")
_OBSERVATION_DATES = ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
_CONDITION_DATES = ("onsetDateTime", "onsetPeriod", "recordedDate")
_PROCEDURE_DATES = ("performedPeriod", "performedDateTime")

# JSON types of the primitives inside each complex element read (fhir.resources is lax about them).
_STR, _NUMBER, _BOOL = "a string", "a JSON number", "a boolean"
_CODING = {"system": _STR, "version": _STR, "code": _STR, "display": _STR, "userSelected": _BOOL}
_JSON_TYPES: dict[str, dict[str, Any]] = {
    "CodeableConcept": {"coding": [_CODING], "text": _STR},
    "Quantity": {"value": _NUMBER, "comparator": _STR, "unit": _STR, "system": _STR, "code": _STR},
}
_MODELS: dict[str, type[BaseModel]] = {"CodeableConcept": CodeableConcept, "Quantity": Quantity}
_ELEMENT_NAME = re.compile(r"[a-z_][A-Za-z0-9_]{0,40}")


@dataclass(frozen=True, slots=True)
class _Finding:
    what: str  # "clinicalStatus is the string 'recurrence'" (element names and known codes only)
    needs: str  # "FHIR R4 needs a CodeableConcept"
    version: str | None  # the likely version, when the shape says it
    fix: str  # how to record the element in R4


def kind_of(record: Record, value_sets: ValueSets) -> Kind | None:
    """What the rules read this record as, or None when no rule reads it."""
    # One pass over the codings (this runs on every record the rules read, on every request).
    pairs = record.codes
    if record.type == "Procedure":
        if value_sets.ablation_procedure.has_any(pairs):
            return Kind.ABLATION
        return Kind.LATER_TREATMENT if value_sets.later_treatment_procedure.has_any(pairs) else None
    if value_sets.recurrence_finding.has_any(pairs):
        return Kind.RECURRENCE
    if record.type == "Observation":
        if value_sets.hb_grade_observation.has_any(pairs):
            return Kind.HB_GRADE
        return Kind.DURATION if value_sets.operation_duration_observation.has_any(pairs) else None
    if record.type == "Condition" and value_sets.hemifacial_spasm_condition.has_any(pairs):
        clinical = record.resource.get("clinicalStatus")
        recurrent = status_codes(record.resource, "clinicalStatus", CLINICAL_SYSTEM)
        stu3_recurrent = isinstance(clinical, str) and clinical in RECURRENT_CLINICAL_STATUSES
        if recurrent & RECURRENT_CLINICAL_STATUSES or stu3_recurrent:
            return Kind.RECURRENCE  # hemifacial spasm whose clinical status says it came back
        return Kind.HFS
    return None


def unreadable(record: Record, kind: Kind) -> Problem | None:
    """A Problem when an element the rules read for ``kind`` is not in its FHIR R4 form."""
    resource = record.resource
    if record.type == "Procedure":
        finding = _procedure(resource, kind)
    elif record.type == "Observation":
        finding = _observation(resource, kind)
    else:
        finding = _condition(resource, kind)
    if finding is None:
        return None
    version = f" (this looks like {finding.version})" if finding.version else ""
    return Problem(
        Reason.UNREADABLE_RECORD,
        f"{record.label}: {finding.what}; {finding.needs}{version}. {_BLOCKS[kind]}",
        f"Send {record.label} in FHIR R4 form: {finding.fix}. If the EHR offers an R4 endpoint, "
        f"use it; if {record.label} was recorded in error, mark it entered-in-error.",
        record.provenance(),
    )


# -- per resource type -------------------------------------------------------------------------


def _procedure(resource: Resource, kind: Kind) -> _Finding | None:
    if "notPerformed" in resource:
        return _Finding(
            "notPerformed is present",
            "FHIR R4 has no notPerformed element: a procedure that did not happen has status "
            "'not-done'",
            "FHIR STU3 or DSTU2",
            "leave out notPerformed and give status 'completed' or 'not-done'",
        )
    found = _unsuffixed(resource, "performed", "performedPeriod or performedDateTime")
    if found is not None:
        return found
    for element in _R5_OCCURRENCE:
        if element in resource:
            return _Finding(
                f"{element} is present",
                "FHIR R4 records when a procedure was done in performedPeriod or "
                "performedDateTime (occurrence[x] is the R5 name)",
                "FHIR R5",
                f"performedPeriod with start and end instead of {element}",
            )
    status = resource.get("status")
    if status is not None and not isinstance(status, str):
        return _wrong_json("status", status, "a code (a JSON string)", "a Procedure status code")
    if status in _OLD_PROCEDURE_STATUSES:
        version, r4 = _OLD_PROCEDURE_STATUSES[status]
        return _Finding(
            f"status is '{status}'",
            f"FHIR R4 has no such Procedure status; '{r4}' means the same",
            version,
            f"status '{r4}' (or 'completed' if the procedure was done)",
        )
    # An unknown ablation status already blocks scoring as not completed; a later treatment's
    # would be set aside, so it is unreadable here.
    if kind is Kind.LATER_TREATMENT and status is not None and status not in R4_PROCEDURE_STATUSES:
        return _Finding(
            "status is not an R4 Procedure status",
            f"FHIR R4 needs one of {', '.join(sorted(R4_PROCEDURE_STATUSES))}",
            None,
            "one of the R4 Procedure status codes",
        )
    # A completed ablation without a usable date already blocks as procedure-date-missing.
    if kind is not Kind.ABLATION and procedure_end(resource) is None:
        return _undated(resource, _PROCEDURE_DATES, "performedPeriod (start and end)")
    return None


def _observation(resource: Resource, kind: Kind) -> _Finding | None:
    for element, r4 in (("effective", "effectiveDateTime"), ("value", "a value[x] element")):
        found = _unsuffixed(resource, element, r4)
        if found is not None:
            return found
    status = resource.get("status")
    if status is not None and not isinstance(status, str):
        return _wrong_json("status", status, "a code (a JSON string)", "an Observation status")
    if status is not None and status not in R4_OBSERVATION_STATUSES:
        return _Finding(
            "status is not an R4 Observation status",
            f"FHIR R4 needs one of {', '.join(sorted(R4_OBSERVATION_STATUSES))}",
            None,
            "one of the R4 Observation status codes",
        )
    if observation_time(resource) is None:
        found = _undated(resource, _OBSERVATION_DATES, "effectiveDateTime")
        if found is not None:
            return found
    if kind is Kind.DURATION and "valueQuantity" in resource:
        return _complex("valueQuantity", resource["valueQuantity"], "Quantity")
    if kind is Kind.RECURRENCE:
        answer = resource.get("valueBoolean")
        if answer is not None and not isinstance(answer, bool):
            return _wrong_json("valueBoolean", answer, "a boolean (true or false)", "true or false")
        if "valueCodeableConcept" in resource:
            return _complex("valueCodeableConcept", resource["valueCodeableConcept"])
    return None


def _condition(resource: Resource, kind: Kind) -> _Finding | None:
    for element, system in (
        ("clinicalStatus", CLINICAL_SYSTEM),
        ("verificationStatus", VERIFICATION_SYSTEM),
    ):
        value = resource.get(element)
        if isinstance(value, str):
            return _string_status(element, value, system)
        if value is not None:
            found = _complex(element, value)
            if found is not None:
                return found
    if "patient" in resource and "subject" not in resource:
        return _Finding(
            "the patient is named in 'patient'",
            "FHIR R4 names the patient of a Condition in subject",
            "FHIR DSTU2",
            "subject with a reference to the Patient",
        )
    if kind is not Kind.RECURRENCE:
        return None  # a diagnosis' dates only order diagnoses; they decide nothing
    found = _unsuffixed(resource, "onset", "onsetDateTime")
    if found is not None:
        return found
    for element, version in (("assertedDate", "FHIR STU3"), ("dateRecorded", "FHIR DSTU2")):
        if element in resource:
            return _Finding(
                f"the date is in {element}",
                f"FHIR R4 calls it recordedDate ({element} is the {version[5:]} name)",
                version,
                f"recordedDate instead of {element}",
            )
    readable = condition_onset(resource) or parse_fhir_time(resource.get("recordedDate"))
    return None if readable is not None else _undated(resource, _CONDITION_DATES, "recordedDate")


# -- elements ----------------------------------------------------------------------------------


def _unsuffixed(resource: Resource, element: str, r4: str) -> _Finding | None:
    if element not in resource:
        return None
    return _Finding(
        f"'{element}' has no type suffix",
        f"FHIR R4 JSON names a choice element by its type, e.g. {r4}",
        "a DSTU2-era or hand-made export, not FHIR R4 JSON",
        f"{r4} instead of '{element}'",
    )


def _undated(resource: Resource, elements: tuple[str, ...], fix: str) -> _Finding | None:
    """The first date element present, when none of them could be read."""
    present = next((e for e in elements if resource.get(e) is not None), None)
    if present is None:
        return None  # undated: the rule says so itself
    return _Finding(
        f"{present} is not a readable FHIR date or dateTime and no other date is",
        "FHIR R4 needs a date or dateTime such as 2026-05-01T09:42:00+08:00"
        if not present.endswith("Period")
        else "FHIR R4 needs a Period object with start and end dateTimes",
        None,
        fix,
    )


def _string_status(element: str, value: str, system: str) -> _Finding:
    known = _STU3_CLINICAL | _DSTU2_CLINICAL if element == "clinicalStatus" else _OLD_VERIFICATION
    shown = f"the string '{value}'" if value in known else "a string"
    if element == "clinicalStatus" and value in _STU3_CLINICAL - _DSTU2_CLINICAL:
        version = "FHIR STU3"
    elif element == "clinicalStatus" and value in _DSTU2_CLINICAL - _STU3_CLINICAL:
        version = "FHIR DSTU2"
    else:
        version = "FHIR STU3 or DSTU2"
    r4_codes = _R4_CLINICAL if element == "clinicalStatus" else _R4_VERIFICATION
    code = f" (code '{value}')" if value in r4_codes else ""
    return _Finding(
        f"{element} is {shown}",
        "FHIR R4 needs a CodeableConcept",
        version,
        f"{element} as a CodeableConcept with a coding from {system}{code}",
    )


def _wrong_json(element: str, value: object, needs: str, fix: str) -> _Finding:
    return _Finding(f"{element} is {_json_kind(value)}", f"FHIR R4 needs {needs}", None, fix)


def _complex(element: str, value: object, r4_type: str = "CodeableConcept") -> _Finding | None:
    article = "a" if r4_type[0] not in "AEIOU" else "an"
    if not isinstance(value, dict):
        return _Finding(
            f"{element} is {_json_kind(value)}",
            f"FHIR R4 needs {article} {r4_type} (a JSON object)",
            None,
            f"{element} as {article} {r4_type} object",
        )
    try:
        text = orjson.dumps(value)  # the memo key: key order as sent, like the element itself
    except orjson.JSONEncodeError:  # not JSON (a key that is no string, nesting beyond 255)
        return _Finding(f"{element} is not JSON", f"FHIR R4 needs a {r4_type}", None, element)
    error = _r4b_error(r4_type, text)
    if error is None:
        return None
    where, needs = error
    return _Finding(
        f"{element}{where} {needs}",
        f"FHIR R4 needs {article} {r4_type} there",
        None,
        f"{element} as a valid R4 {r4_type}",
    )


# Status concepts and codes repeat across patients and chart openings, so the model run (10-30 µs
# per element) is memoised by the element's JSON text; the result is a path and a phrase only.
@functools.lru_cache(maxsize=2048)
def _r4b_error(r4_type: str, text: bytes) -> tuple[str, str] | None:
    """Where the element is not R4 (a path of element names) and what is wrong, else None."""
    value = orjson.loads(text)
    wrong = _json_types(value, _JSON_TYPES[r4_type], "")
    if wrong is not None:
        return wrong
    try:
        _MODELS[r4_type].model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return _where(errors[0]["loc"]) if errors else "", _problem_phrase(errors)
    except Exception:  # a model that fails in another way: still unreadable, never a crash
        return "", "could not be validated"
    return None


def _json_types(value: dict[str, Any], spec: dict[str, Any], path: str) -> tuple[str, str] | None:
    """The first primitive with the wrong JSON type, e.g. (".coding[0].code", "is a JSON number")."""
    for key, expected in spec.items():
        item = value.get(key)
        if item is None:
            continue
        if isinstance(expected, list):
            if isinstance(item, list):
                for i, child in enumerate(item):
                    if isinstance(child, dict):
                        found = _json_types(child, expected[0], f"{path}.{key}[{i}]")
                        if found is not None:
                            return found
        elif _json_kind(item) != expected:
            return f"{path}.{key}", f"is {_json_kind(item)}, not {expected}"
    return None


def _where(loc: tuple[int | str, ...]) -> str:
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _ELEMENT_NAME.fullmatch(part):
            parts.append(f".{part}")
        else:
            parts.append(".(an unrecognised element)")
    return "".join(parts)


def _problem_phrase(errors: list[Any]) -> str:
    kind = errors[0]["type"] if errors else ""
    return {
        "extra_forbidden": "is an element FHIR R4 does not define here",
        "list_type": "is not a list",
        "model_type": "is not an object",
        "dict_type": "is not an object",
        "string_type": "is not a string",
        "missing": "is missing",
    }.get(kind, "is not valid")


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int | float):
        return _NUMBER
    if isinstance(value, str):
        return _STR
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else "not JSON"
