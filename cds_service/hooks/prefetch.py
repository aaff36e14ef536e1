"""Turns a hook request's prefetch into the patient's resources, fetching what is missing.

Every key arrives in one of five shapes (CDS Hooks 2.0 §prefetch): absent, ``null``, an empty or
filled Bundle, a single resource, or an OperationOutcome. ``null`` and empty Bundles mean "no data"
and are never re-queried; absent keys, OperationOutcomes and values of the wrong shape are fetched
from ``fhirServer`` when the service may, otherwise the call ends in 412.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cds_service.hooks.errors import PrefetchUnavailable
from cds_service.hooks.request import HookRequest
from cds_service.hooks.services import CdsService
from cds_service.security.fhir_client import FhirClient, FhirFetchError
from fhir_mappings import Resource, resources_from_bundle

_TOKEN = re.compile(r"\{\{\s*context\.([A-Za-z]+)\s*\}\}")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """When the service may query the EHR's FHIR server itself."""

    fetch_without_token: bool = False  # open sandboxes send fhirServer but no fhirAuthorization


def render_template(template: str, context: dict[str, Any]) -> str:
    """Fill ``{{context.x}}`` tokens with percent-encoded context values."""

    def value(match: re.Match[str]) -> str:
        field = context.get(match.group(1))
        if not isinstance(field, str):
            raise PrefetchUnavailable(
                f"prefetch token context.{match.group(1)} has no string value"
            )
        return quote(field, safe="")

    return _TOKEN.sub(value, template)


def _classify(value: Any, template: str) -> tuple[list[Resource] | None, str]:
    """Resources for a usable prefetch value, else ``None`` and why it cannot be used."""
    if value is None:
        return [], "null"
    if not isinstance(value, dict):
        return None, "not a FHIR resource"
    kind = value.get("resourceType")
    if kind == "OperationOutcome":
        return None, "an OperationOutcome"
    expected = template.split("?", 1)[0].split("/", 1)[0]
    if kind == "Bundle":
        entries = value.get("entry") or []
        if not isinstance(entries, list):
            return None, "a Bundle with a malformed 'entry'"
        return resources_from_bundle(value), ""
    if "?" not in template and kind == expected:
        return [value], ""  # a read template answered with the resource itself
    return (
        None,
        f"a {kind if isinstance(kind, str) else 'non-FHIR'} value where a {expected} Bundle was expected",
    )


def _has_next(bundle: Any) -> bool:
    links = bundle.get("link") if isinstance(bundle, dict) else None
    return isinstance(links, list) and any(
        isinstance(x, dict) and x.get("relation") == "next" for x in links
    )


def resolve_prefetch(
    request: HookRequest,
    service: CdsService,
    client: FhirClient,
    policy: FetchPolicy,
    issuer_fhir_servers: tuple[str, ...] = (),
) -> list[Resource]:
    """All resources for the patient: usable prefetch plus what had to be fetched.

    ``issuer_fhir_servers`` are the FHIR bases the calling EHR's trust entry allows, on top of
    the service-wide allowlist.
    """
    token = request.fhir_authorization.access_token if request.fhir_authorization else None
    may_fetch = request.fhir_server is not None and (
        token is not None or policy.fetch_without_token
    )
    resources: list[Resource] = []
    to_fetch: dict[str, str] = {}
    unusable: list[str] = []
    for key, template in service.prefetch.items():
        value = request.prefetch.get(key)
        found, why = _classify(value, template) if key in request.prefetch else (None, "absent")
        if found is None:
            unusable.append(f"'{key}' was {why}")
            to_fetch[key] = render_template(template, request.context)
            continue
        if may_fetch and isinstance(value, dict) and _has_next(value):
            assert request.fhir_server is not None
            try:
                found = client.follow_pages(request.fhir_server, value, token, issuer_fhir_servers)
            except FhirFetchError as exc:
                raise PrefetchUnavailable(
                    f"prefetch '{key}' is paginated and the next page failed: {exc}"
                ) from exc
        resources.extend(found)
    if not to_fetch:
        return resources
    problem = "; ".join(unusable)
    if request.fhir_server is None:
        raise PrefetchUnavailable(f"prefetch {problem}, and the request has no fhirServer to query")
    if not may_fetch:
        raise PrefetchUnavailable(f"prefetch {problem}, and the request has no fhirAuthorization")
    try:
        fetched = client.fetch_all(request.fhir_server, to_fetch, token, issuer_fhir_servers)
    except FhirFetchError as exc:
        raise PrefetchUnavailable(
            f"prefetch {problem}, and querying fhirServer failed: {exc}"
        ) from exc
    for items in fetched.values():
        resources.extend(items)
    return resources
