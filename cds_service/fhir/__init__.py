"""The one outbound FHIR client (see :mod:`.client`), its allowlist and its errors."""

from cds_service.fhir.allowlist import FhirAllowlist, base_problem, outside, parse_allowlist
from cds_service.fhir.client import FhirAnswer, FhirClient, outcome_text, search_matches
from cds_service.fhir.errors import FhirError, FhirTimeout, FhirTooManyPages, FhirUnreachable

__all__ = [
    "FhirAllowlist",
    "FhirAnswer",
    "FhirClient",
    "FhirError",
    "FhirTimeout",
    "FhirTooManyPages",
    "FhirUnreachable",
    "base_problem",
    "outcome_text",
    "outside",
    "parse_allowlist",
    "search_matches",
]
