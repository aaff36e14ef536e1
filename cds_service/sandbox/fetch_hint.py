"""One line for a smoke run whose fetch-mode calls all failed for one setting of the service.

Without prefetch the service must query the FHIR server itself, and it may only when the server is
on ``CDS_FHIR_ALLOWLIST`` and the call brings a token (``fhirAuthorization``, from ``smoke --token``)
or ``CDS_FHIR_FETCH_WITHOUT_TOKEN=1`` lets it query an open server without one. A service started
without them (``make run`` as it is) answers every fetch-mode call 412, and the table ends "68 OK,
68 ERROR" with no word on what to set (issue 16). The service says which it is in the 412's
OperationOutcome: the phrases below are its own (``cds_service/gather/prefetch.py`` and
``cds_service/fhir/client.py``; ``test_sandbox_fetch_hint`` runs a real service to keep them in
step). The service may be another version or a deployment, so only text is there to go by.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

Reason = Literal["no-authorization", "not-allowlisted"]

#: The end of the 412 when the call has no token and fetching without one is not allowed.
NO_AUTHORIZATION = "the request has no fhirAuthorization"
#: In the 412 when ``fhirServer`` is not on the allowlist (nor the calling EHR's trust entry).
NOT_ALLOWLISTED = "fhirServer is not on this service's FHIR allowlist"


def refusal_reason(status: int, answer: Any) -> Reason | None:
    """The configuration reason a fetch-mode call (``answer``: the service's JSON) was refused
    for, or None for any other failure."""
    if status != 412 or not isinstance(answer, dict):
        return None
    if answer.get("resourceType") != "OperationOutcome":
        return None
    said = [
        issue["diagnostics"]
        for issue in answer.get("issue") or []
        if isinstance(issue, dict) and isinstance(issue.get("diagnostics"), str)
    ]
    if any(text.rstrip(". ").endswith(NO_AUTHORIZATION) for text in said):
        return "no-authorization"
    if any(NOT_ALLOWLISTED in text for text in said):
        return "not-allowlisted"
    return None


def fetch_hint(reasons: Iterable[Reason | None], fhir_base: str) -> str | None:
    """What to set, when there was a fetch-mode call and each one failed for the same reason.

    ``reasons`` has one item per fetch-mode call: its :func:`refusal_reason`, None for a call that
    succeeded or failed otherwise (then there is no hint: the setting is not the whole story)."""
    seen = set(reasons)
    if len(seen) != 1:
        return None
    (reason,) = seen
    if reason is None:
        return None
    allowlist = f"CDS_FHIR_ALLOWLIST={fhir_base}"
    if urlsplit(fhir_base).scheme == "http":
        allowlist += " (for http also CDS_DEV_MODE=1, which `make run` sets)"
    if reason == "not-allowlisted":
        return (
            f"Hint: every fetch-mode call failed because {fhir_base} is not on the service's FHIR "
            f"allowlist: start the service with {allowlist}."
        )
    return (
        f"Hint: every fetch-mode call failed because the service had no token for {fhir_base}: "
        "give smoke --token (one the FHIR server accepts), or for an open local server start the "
        f"service with CDS_FHIR_FETCH_WITHOUT_TOKEN=1; either way it needs {allowlist}."
    )


__all__ = ["NOT_ALLOWLISTED", "NO_AUTHORIZATION", "Reason", "fetch_hint", "refusal_reason"]
