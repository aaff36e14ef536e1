"""The one outbound FHIR client (see :mod:`.client`), its allowlist, its URL rule and its errors."""

from cds_service.fhir.allowlist import FhirAllowlist, base_problem, outside, parse_allowlist
from cds_service.fhir.client import (
    DEFAULT_MAX_FETCHES_PER_ISSUER,
    DEFAULT_MAX_RESPONSE_BYTES,
    FhirAnswer,
    FhirClient,
    outcome_text,
    search_matches,
)
from cds_service.fhir.errors import (
    FhirError,
    FhirTimeout,
    FhirTooLarge,
    FhirTooManyPages,
    FhirUnreachable,
)
from cds_service.fhir.urls import FhirBase, UrlRefused

__all__ = [
    "DEFAULT_MAX_FETCHES_PER_ISSUER",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "FhirAllowlist",
    "FhirAnswer",
    "FhirBase",
    "FhirClient",
    "FhirError",
    "FhirTimeout",
    "FhirTooLarge",
    "FhirTooManyPages",
    "FhirUnreachable",
    "UrlRefused",
    "base_problem",
    "outcome_text",
    "outside",
    "parse_allowlist",
    "search_matches",
]
