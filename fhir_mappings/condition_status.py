"""Condition clinicalStatus and verificationStatus codes (system may be omitted by some EHRs)."""

from __future__ import annotations

from .json_access import get_str, iter_dicts
from .types import Resource

CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
#: verificationStatus codes that mean the condition is not on the patient's record at all.
VOID_VERIFICATION = frozenset({"refuted", "entered-in-error"})


def status_codes(resource: Resource, element: str, system: str) -> set[str]:
    """Codes of ``element`` (a CodeableConcept) in ``system`` or with no system."""
    concept = resource.get(element)
    if not isinstance(concept, dict):
        return set()
    codes = set()
    for coding in iter_dicts(concept, "coding"):
        code = get_str(coding, "code")
        if code is not None and coding.get("system", system) == system:
            codes.add(code)
    return codes


def voided(resource: Resource) -> str | None:
    """The verificationStatus that takes the Condition off the record, if any."""
    codes = status_codes(resource, "verificationStatus", VERIFICATION_SYSTEM) & VOID_VERIFICATION
    return min(codes) if codes else None
