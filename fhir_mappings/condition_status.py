"""Condition clinicalStatus and verificationStatus codes (system may be omitted by some EHRs)."""

from __future__ import annotations

from .types import Resource

CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
#: verificationStatus codes that mean the condition is not on the patient's record at all.
VOID_VERIFICATION = frozenset({"refuted", "entered-in-error"})


def status_codes(resource: Resource, element: str, system: str) -> set[str]:
    """Codes of ``element`` (a CodeableConcept) in ``system`` or with no system."""
    # Written out (no iter_dicts/get_str): every Condition the rules read goes through here
    # two or three times per assessment (issue 12).
    codes: set[str] = set()
    concept = resource.get(element)
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict):
                code = coding.get("code")
                if isinstance(code, str) and code and coding.get("system", system) == system:
                    codes.add(code)
    return codes


def voided(resource: Resource) -> str | None:
    """The verificationStatus that takes the Condition off the record, if any."""
    codes = status_codes(resource, "verificationStatus", VERIFICATION_SYSTEM) & VOID_VERIFICATION
    return min(codes) if codes else None
