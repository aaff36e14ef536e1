"""The one outbound FHIR client: the hooks, the SMART app, recalibration and the sandbox tools use it.

* :mod:`.allowlist`: which servers may be queried and which URLs lie under a base (one http rule).
* :mod:`.client`: one ``requests`` session, urllib3 retries for GET only, one paging rule, one time
  budget per call.
* :mod:`.errors`: what failed, safe to show, with the server's HTTP status.
"""

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
