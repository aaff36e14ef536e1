"""Builders for realistic FHIR R4 resources, shaped as an EHR sends them.

Defaults describe one patient, ``p1``, who had a 42-minute CT-guided radiofrequency ablation on
1 May 2026 in a +08:00 time zone, graded House-Brackmann II six hours later. Every builder takes
keyword arguments and ``**extra``: each extra item sets a top-level element, or removes it when
its value is None (e.g. ``hb_observation(effectiveDateTime=None, issued="...")``). Resources carry
what real ones do (meta.versionId, narrative text, notes with free text, codings with display), so
tests can check that free text never reaches a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Resource = dict[str, Any]
Coding = tuple[str, str, str]  # system, code, display

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
PROJECT = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-rfa"
HB_SYSTEM = "https://hfs-cds.example.org/fhir/CodeSystem/house-brackmann"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

ABLATION_CODINGS: tuple[Coding, ...] = (
    (ICD10PCS, "005M3ZZ", "Destruction of Facial Nerve, Percutaneous Approach"),
    (
        PROJECT,
        "ct-guided-stylomastoid-rfa",
        "CT-guided stylomastoid foramen RFA of the facial nerve",
    ),
)
MVD_CODING: Coding = (CPT, "61458", "Craniectomy for decompression of cranial nerves")
HB_CODING: Coding = (PROJECT, "hb-grade-post-rfa", "House-Brackmann grade after RFA")
HB_SNOMED_CODING: Coding = (SNOMED, "112106009", "Seventh cranial nerve function")
DURATION_CODING: Coding = (PROJECT, "operation-duration", "Duration of the ablation procedure")
RECURRENCE_CODING: Coding = (PROJECT, "hfs-recurrence", "Recurrence of hemifacial spasm after RFA")
HFS_CODING: Coding = (ICD10CM, "G51.31", "Clonic hemifacial spasm, right")

#: Free text an EHR puts in narrative and notes; it must never appear in a mapping message.
FREE_TEXT = "Mrs Chen Wei reports twitching of the left eyelid since Tuesday"

ROMAN = ("I", "II", "III", "IV", "V", "VI")


def codeable(*codings: Coding, text: str | None = None) -> Resource:
    """A CodeableConcept with one coding per (system, code, display)."""
    concept: Resource = {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]}
    if text is not None:
        concept["text"] = text
    return concept


def reference(resource_type: str, id: str) -> Resource:
    return {"reference": f"{resource_type}/{id}"}


def patient(id: str = "p1", **extra: Any) -> Resource:
    resource: Resource = {
        "resourceType": "Patient",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": "2026-04-20T08:00:00+08:00"},
        "name": [{"family": "Chen", "given": ["Wei"]}],
        "gender": "female",
        "birthDate": "1968-07-14",
    }
    return _apply(resource, extra)


def procedure(
    *,
    id: str,
    codings: Sequence[Coding],
    start: str | None = None,
    end: str | None = None,
    performed: str | None = None,
    status: str = "completed",
    patient: str = "p1",
    version: str = "1",
    **extra: Any,
) -> Resource:
    """Any Procedure; ``start``/``end`` fill performedPeriod, ``performed`` performedDateTime."""
    resource: Resource = {
        "resourceType": "Procedure",
        "id": id,
        "meta": {"versionId": version, "lastUpdated": "2026-05-01T10:00:00+08:00"},
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{FREE_TEXT}</div>',
        },
        "status": status,
        "category": codeable((SNOMED, "387713003", "Surgical procedure")),
        "code": codeable(*codings, text="Facial nerve procedure"),
        "subject": {"reference": f"Patient/{patient}", "display": "Chen Wei"},
        "note": [{"text": FREE_TEXT}],
    }
    if start is not None or end is not None:
        resource["performedPeriod"] = {
            k: v for k, v in (("start", start), ("end", end)) if v is not None
        }
    if performed is not None:
        resource["performedDateTime"] = performed
    return _apply(resource, extra)


def ablation_procedure(
    *,
    id: str = "rfa1",
    start: str | None = "2026-05-01T09:00:00+08:00",
    end: str | None = "2026-05-01T09:42:00+08:00",
    performed: str | None = None,
    status: str = "completed",
    patient: str = "p1",
    codings: Sequence[Coding] = ABLATION_CODINGS,
    version: str = "1",
    **extra: Any,
) -> Resource:
    """The facial-nerve RFA (ICD-10-PCS 005M3ZZ plus the project code by default)."""
    return procedure(
        id=id,
        codings=codings,
        start=start,
        end=end,
        performed=performed,
        status=status,
        patient=patient,
        version=version,
        **extra,
    )


def mvd_procedure(
    *,
    id: str = "mvd1",
    start: str | None = "2026-09-10T08:00:00+08:00",
    end: str | None = "2026-09-10T11:30:00+08:00",
    status: str = "completed",
    patient: str = "p1",
    **extra: Any,
) -> Resource:
    """A microvascular decompression (CPT 61458), by default four months after the RFA."""
    return procedure(
        id=id, codings=[MVD_CODING], start=start, end=end, status=status, patient=patient, **extra
    )


def observation(
    *,
    id: str,
    coding: Coding,
    effective: str | None,
    status: str = "final",
    patient: str = "p1",
    version: str = "1",
    **extra: Any,
) -> Resource:
    """Any Observation; ``effective`` fills effectiveDateTime."""
    resource: Resource = {
        "resourceType": "Observation",
        "id": id,
        "meta": {"versionId": version, "lastUpdated": "2026-05-01T16:00:00+08:00"},
        "status": status,
        "category": [codeable((OBSERVATION_CATEGORY, "exam", "Exam"))],
        "code": codeable(coding),
        "subject": {"reference": f"Patient/{patient}"},
        "issued": "2026-05-01T16:05:00.000+08:00",
        "note": [{"text": FREE_TEXT}],
    }
    if effective is not None:
        resource["effectiveDateTime"] = effective
    return _apply(resource, extra)


def hb_observation(
    *,
    id: str = "hb1",
    grade: str | int | None = "II",
    effective: str | None = "2026-05-01T15:00:00+08:00",
    status: str = "final",
    patient: str = "p1",
    coding: Coding = HB_CODING,
    **extra: Any,
) -> Resource:
    """A House-Brackmann grade: a Roman numeral gives valueCodeableConcept, an int valueInteger."""
    resource = observation(
        id=id, coding=coding, effective=effective, status=status, patient=patient
    )
    if isinstance(grade, str):
        display = f"House-Brackmann grade {grade}"
        resource["valueCodeableConcept"] = codeable((HB_SYSTEM, grade, display))
    elif isinstance(grade, int):
        resource["valueInteger"] = grade
    return _apply(resource, extra)


def duration_observation(
    *,
    id: str = "dur1",
    value: float | None = 42,
    unit: str | None = "min",
    system: str | None = UCUM,
    procedure: str | None = "rfa1",
    effective: str | None = "2026-05-01T09:42:00+08:00",
    status: str = "final",
    patient: str = "p1",
    **extra: Any,
) -> Resource:
    """The operation duration as a UCUM Quantity, partOf the procedure ``procedure``."""
    resource = observation(
        id=id, coding=DURATION_CODING, effective=effective, status=status, patient=patient
    )
    quantity: Resource = {"value": value, "unit": unit, "system": system, "code": unit}
    resource["valueQuantity"] = {k: v for k, v in quantity.items() if v is not None}
    if procedure is not None:
        resource["partOf"] = [reference("Procedure", procedure)]
    return _apply(resource, extra)


def recurrence_observation(
    *,
    id: str = "rec1",
    effective: str | None = "2026-08-01T10:00:00+08:00",
    value: bool | str | None = True,
    status: str = "final",
    patient: str = "p1",
    **extra: Any,
) -> Resource:
    """A recurrence finding; ``value`` True/False gives valueBoolean, "yes"/"no" SNOMED answers."""
    resource = observation(
        id=id, coding=RECURRENCE_CODING, effective=effective, status=status, patient=patient
    )
    if isinstance(value, bool):
        resource["valueBoolean"] = value
    elif value == "yes":
        resource["valueCodeableConcept"] = codeable((SNOMED, "373066001", "Yes"))
    elif value == "no":
        resource["valueCodeableConcept"] = codeable((SNOMED, "373067005", "No"))
    return _apply(resource, extra)


def condition(
    *,
    id: str,
    coding: Coding,
    clinical_status: str | None = "active",
    verification_status: str | None = "confirmed",
    onset: str | None = None,
    recorded: str | None = None,
    patient: str = "p1",
    **extra: Any,
) -> Resource:
    """Any Condition; ``onset`` fills onsetDateTime, ``recorded`` recordedDate."""
    resource: Resource = {
        "resourceType": "Condition",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": "2026-04-20T08:00:00+08:00"},
        "code": codeable(coding, text="Hemifacial spasm"),
        "subject": {"reference": f"Patient/{patient}"},
        "note": [{"text": FREE_TEXT}],
    }
    if clinical_status is not None:
        resource["clinicalStatus"] = codeable(
            (CONDITION_CLINICAL, clinical_status, clinical_status)
        )
    if verification_status is not None:
        resource["verificationStatus"] = codeable(
            (CONDITION_VERIFICATION, verification_status, verification_status)
        )
    if onset is not None:
        resource["onsetDateTime"] = onset
    if recorded is not None:
        resource["recordedDate"] = recorded
    return _apply(resource, extra)


def hfs_condition(
    *,
    id: str = "hfs1",
    coding: Coding = HFS_CODING,
    clinical_status: str | None = "active",
    verification_status: str | None = "confirmed",
    onset: str | None = "2023-03",
    recorded: str | None = "2026-04-20",
    patient: str = "p1",
    **extra: Any,
) -> Resource:
    """Hemifacial spasm (ICD-10-CM G51.31 by default), diagnosed before the RFA."""
    return condition(
        id=id,
        coding=coding,
        clinical_status=clinical_status,
        verification_status=verification_status,
        onset=onset,
        recorded=recorded,
        patient=patient,
        **extra,
    )


def recurrence_condition(
    *,
    id: str = "recc1",
    onset: str | None = "2026-08-01",
    recorded: str | None = "2026-08-03",
    verification_status: str | None = "confirmed",
    patient: str = "p1",
    **extra: Any,
) -> Resource:
    """A Condition coded as hemifacial spasm recurrence after RFA."""
    return condition(
        id=id,
        coding=RECURRENCE_CODING,
        onset=onset,
        recorded=recorded,
        verification_status=verification_status,
        patient=patient,
        **extra,
    )


def bundle(
    *resources: Resource, type: str = "searchset", base: str = "https://ehr.example.org/fhir"
) -> Resource:
    """A Bundle with one entry per resource (fullUrl and search mode as a FHIR server sends)."""
    entries = []
    for resource in resources:
        entry: Resource = {"resource": resource}
        if "id" in resource and "resourceType" in resource:
            entry["fullUrl"] = f"{base}/{resource['resourceType']}/{resource['id']}"
        if type == "searchset":
            entry["search"] = {"mode": "match"}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": type, "total": len(entries), "entry": entries}


def typical_patient() -> list[Resource]:
    """A complete, scorable record: patient, diagnosis, 42-minute RFA, HB II at 6 h."""
    return [patient(), hfs_condition(), ablation_procedure(), hb_observation()]


def _apply(resource: Resource, extra: dict[str, Any]) -> Resource:
    for key, value in extra.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource
