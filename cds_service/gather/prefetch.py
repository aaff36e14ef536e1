"""Turns a hook request's prefetch into the patient's resources, fetching what is missing.

Every key arrives in one of five shapes (CDS Hooks 2.0 §prefetch): absent, ``null``, an empty or
filled Bundle, a single resource, or an OperationOutcome. ``null`` and empty Bundles mean "no data"
and are never re-queried; absent keys, OperationOutcomes and values of the wrong shape are fetched
from ``fhirServer`` when the service may, otherwise the call ends in 412.

Optional keys (the open follow-up orders) are resolved the same
way, but never cause a 412: when one cannot be had the card is still shown, only less informed
(a suggestion that may duplicate an order is safer than no card). They are fetched in the same
concurrent batch as the required keys; if that batch fails quickly, the required keys are tried
once more alone, so a FHIR server that refuses only the optional search still yields a card.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cds_service.fhir import FhirClient, FhirError
from cds_service.gather.queries import fill_template
from fhir_mappings import Resource, resources_from_bundle

log = logging.getLogger(__name__)


class PrefetchUnavailable(Exception):
    """Required data is neither in prefetch nor obtainable from the FHIR server (the hooks answer
    412). The message names keys and failures, never values or tokens."""


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """When the service may query the EHR's FHIR server itself."""

    fetch_without_token: bool = False  # open sandboxes send fhirServer but no fhirAuthorization


def _query(template: str, context: Mapping[str, Any]) -> str:
    """The filled template; PrefetchUnavailable when a token has no value."""
    rendered, missing = fill_template(template, context)
    if missing:
        raise PrefetchUnavailable(f"prefetch token {missing} has no string value")
    return rendered


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
    templates: Mapping[str, str],
    prefetch: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    fhir_server: str | None,
    token: str | None,
    client: FhirClient,
    policy: FetchPolicy,
    optional_keys: frozenset[str] = frozenset(),
    issuer_fhir_servers: tuple[str, ...] = (),
    issuer: str | None = None,
) -> list[Resource]:
    """All resources for the patient: usable ``prefetch`` plus what had to be fetched.

    ``templates`` are the queries by prefetch key, filled from ``context``; ``fhir_server`` and
    ``token`` are where (and as whom) missing keys may be fetched. ``issuer_fhir_servers`` are the
    FHIR bases the calling EHR's trust entry allows, on top of the service-wide allowlist;
    ``issuer`` names that EHR (the client bounds each EHR's fetches in flight).
    """
    may_fetch = fhir_server is not None and (token is not None or policy.fetch_without_token)
    resources: list[Resource] = []
    to_fetch: dict[str, str] = {}
    optional: dict[str, str] = {}  # optional keys to fetch, and why they must be
    unusable: list[str] = []
    for key, template in templates.items():
        value = prefetch.get(key)
        found, why = _classify(value, template) if key in prefetch else (None, "absent")
        if found is None:
            if key in optional_keys:
                optional[key] = why
            else:
                unusable.append(f"'{key}' was {why}")
            to_fetch[key] = _query(template, context)
            continue
        if may_fetch and isinstance(value, dict) and _has_next(value):
            assert fhir_server is not None
            try:
                found = client.follow_pages(
                    fhir_server, value, token, issuer_fhir_servers, issuer=issuer
                )
            except FhirError as exc:
                if key not in optional_keys:
                    raise PrefetchUnavailable(
                        f"prefetch '{key}' is paginated and the next page failed: {exc}"
                    ) from exc
                log.warning(
                    "optional prefetch '%s': next page failed (%s); first page used", key, exc
                )
        resources.extend(found)
    if not to_fetch:
        return resources
    if not unusable:  # only optional keys are missing
        if not may_fetch:
            log.info(
                "optional prefetch %s not fetched: no fhirServer or authorization", _keys(optional)
            )
            return resources
        assert fhir_server is not None
        try:
            fetched = client.fetch_all(
                fhir_server, to_fetch, token, issuer_fhir_servers, issuer=issuer
            )
        except FhirError as exc:
            log.warning("optional prefetch %s could not be fetched: %s", _keys(optional), exc)
            return resources
        return resources + [r for items in fetched.values() for r in items]
    problem = "; ".join(unusable)
    if fhir_server is None:
        raise PrefetchUnavailable(f"prefetch {problem}, and the request has no fhirServer to query")
    if not may_fetch:
        raise PrefetchUnavailable(f"prefetch {problem}, and the request has no fhirAuthorization")
    started = time.monotonic()
    try:
        fetched = client.fetch_all(fhir_server, to_fetch, token, issuer_fhir_servers, issuer=issuer)
    except FhirError as exc:
        quick = time.monotonic() - started < client.budget_seconds / 2
        if not optional or not quick:  # a slow failure: no time for a second try
            raise PrefetchUnavailable(
                f"prefetch {problem}, and querying fhirServer failed: {exc}"
            ) from exc
        # Perhaps only the optional search was refused: the required keys alone, once more.
        required = {k: q for k, q in to_fetch.items() if k not in optional}
        try:
            fetched = client.fetch_all(
                fhir_server, required, token, issuer_fhir_servers, issuer=issuer
            )
        except FhirError as again:
            raise PrefetchUnavailable(
                f"prefetch {problem}, and querying fhirServer failed: {again}"
            ) from again
        log.warning("optional prefetch %s could not be fetched: %s", _keys(optional), exc)
    for items in fetched.values():
        resources.extend(items)
    return resources


def _keys(why: dict[str, str]) -> str:
    """``'key' (absent)`` for each key: names and shapes only, never values."""
    return ", ".join(f"'{k}' ({reason})" for k, reason in why.items())
