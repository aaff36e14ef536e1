"""Which patient a resource is about, and which patient a set of resources is about."""

from __future__ import annotations

from collections.abc import Iterable

from .collect import ResourceInput, collect_resources
from .json_access import get_str
from .references import FHIR_ID, referenced
from .types import Resource


def subject_patient_id(resource: Resource) -> str | None:
    """The Patient id in ``subject.reference`` (relative, versioned or absolute), else None."""
    target = referenced(resource.get("subject"))
    return target[1] if target is not None and target[0] == "Patient" else None


def foreign_subject(resource: Resource, patient_id: str | None) -> str | None:
    """Why the resource is not about ``patient_id``, or None when it is."""
    if patient_id is None:
        return "the patient could not be determined"
    if resource.get("subject") is None:
        return "no subject"
    subject = subject_patient_id(resource)
    if subject is None:
        return "subject is not a Patient reference"
    return None if subject == patient_id else "subject is another patient"


def infer_patient_id(resources: Iterable[ResourceInput] | ResourceInput) -> str | None:
    """The single Patient resource's id, else the one patient every subject names, else None."""
    return infer_from_json(collect_resources(resources)[0])


def infer_from_json(resources: Iterable[Resource]) -> str | None:
    patients: set[str] = set()
    subjects: set[str] = set()
    for resource in resources:
        if resource.get("resourceType") == "Patient":
            rid = get_str(resource, "id")
            if rid is not None and FHIR_ID.fullmatch(rid):
                patients.add(rid)
        subject = subject_patient_id(resource)
        if subject is not None:
            subjects.add(subject)
    if len(patients) == 1:
        return next(iter(patients))
    return next(iter(subjects)) if len(subjects) == 1 else None
