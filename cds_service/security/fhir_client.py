"""The only way the service talks to a FHIR server: allowlisted, time-bounded, token-scoped.

* A server is contacted only if its base URL is on the allowlist (https; http only on loopback in
  development mode).
* One pooled ``requests.Session`` and one thread pool live for the life of the app; the queries of
  one hook call run concurrently under a single time budget.
* Redirects are never followed, and ``next`` links are followed only on the same server, so the
  EHR's token goes nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

from cds_service.security.net import is_loopback
from fhir_mappings import Resource, resources_from_bundle

_FHIR_JSON = "application/fhir+json"


class FhirFetchError(Exception):
    """A FHIR query failed; the message is safe to return to the EHR (no token, no patient data).

    ``status`` is the FHIR server's HTTP status when it answered with one (401 and 403 matter to
    the SMART app: refresh the token, or say access was refused).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class FhirAllowlist:
    """Base-URL prefixes the service may query, matched on scheme, host, port and path segments."""

    bases: tuple[str, ...]
    allow_loopback_http: bool = False

    def permits(self, url: str, extra_bases: tuple[str, ...] = ()) -> bool:
        """Is ``url`` under an allowed base (the list, or ``extra_bases`` for this caller)?"""
        target = urlsplit(url)
        if target.scheme == "http" and not (
            self.allow_loopback_http and is_loopback(target.hostname)
        ):
            return False
        if target.scheme not in ("http", "https") or target.username or target.password:
            return False
        for base in self.bases + extra_bases:
            allowed = urlsplit(base.rstrip("/"))
            if (allowed.scheme, allowed.netloc.lower()) != (target.scheme, target.netloc.lower()):
                continue
            prefix = allowed.path.rstrip("/")
            if target.path == prefix or target.path.startswith(prefix + "/"):
                return True
        return False


class FhirClient:
    """Concurrent, bounded FHIR reads and searches for the prefetch fallback."""

    def __init__(
        self,
        allowlist: FhirAllowlist,
        budget_seconds: float = 2.0,
        connect_timeout_seconds: float = 0.5,
        max_pages: int = 5,
        max_workers: int = 8,
    ) -> None:
        self.allowlist = allowlist
        self.budget_seconds = budget_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.max_pages = max_pages
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=max_workers, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fhir-fetch")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    def fetch_all(
        self,
        base: str,
        queries: Mapping[str, str],
        token: str | None,
        extra_bases: tuple[str, ...] = (),
    ) -> dict[str, list[Resource]]:
        """Run each relative query against ``base`` concurrently; all results, or FhirFetchError.

        ``extra_bases`` extend the allowlist for this call (the calling EHR's own FHIR servers).
        """
        if not self.allowlist.permits(base, extra_bases):
            raise FhirFetchError("fhirServer is not on this service's FHIR allowlist")
        deadline = time.monotonic() + self.budget_seconds
        futures = {
            key: self._pool.submit(self._search, base, query, token, deadline, extra_bases)
            for key, query in queries.items()
        }
        done, pending = wait(
            futures.values(), timeout=self.budget_seconds, return_when=FIRST_EXCEPTION
        )
        for future in pending:
            future.cancel()
        # A query that failed explains more than one cut short because of it: report it first.
        for future in done:
            if future.exception() is not None:
                future.result()  # re-raises that query's FhirFetchError
        results: dict[str, list[Resource]] = {}
        for key, future in futures.items():
            if future not in done:
                raise FhirFetchError(
                    f"FHIR query for '{key}' did not finish within {self.budget_seconds:g} s"
                )
            results[key] = future.result()
        return results

    def follow_pages(
        self, base: str, bundle: Resource, token: str | None, extra_bases: tuple[str, ...] = ()
    ) -> list[Resource]:
        """Entries of a paginated Bundle from the EHR's prefetch, following ``next`` on ``base``."""
        if not self.allowlist.permits(base, extra_bases):
            raise FhirFetchError("fhirServer is not on this service's FHIR allowlist")
        deadline = time.monotonic() + self.budget_seconds
        return self._collect(base, bundle, token, deadline, 1, extra_bases)

    # -- internals ---------------------------------------------------------------------------------

    def _search(
        self,
        base: str,
        query: str,
        token: str | None,
        deadline: float,
        extra_bases: tuple[str, ...],
    ) -> list[Resource]:
        body = self._get(urljoin(base + "/", query), token, deadline)
        if body.get("resourceType") != "Bundle":
            return [body]  # a read
        return self._collect(base, body, token, deadline, 1, extra_bases)

    def _collect(
        self,
        base: str,
        bundle: Resource,
        token: str | None,
        deadline: float,
        pages: int,
        extra_bases: tuple[str, ...],
    ) -> list[Resource]:
        resources = resources_from_bundle(bundle)
        next_url = _next_link(bundle)
        while next_url and pages < self.max_pages:
            same_server = next_url.startswith(base.rstrip("/") + "/")
            if not same_server or not self.allowlist.permits(next_url, extra_bases):
                raise FhirFetchError("a 'next' link pointed away from fhirServer; not followed")
            page = self._get(next_url, token, deadline)
            if page.get("resourceType") != "Bundle":
                raise FhirFetchError("a 'next' page was not a Bundle")
            resources.extend(resources_from_bundle(page))
            next_url = _next_link(page)
            pages += 1
        return resources

    def _get(self, url: str, token: str | None, deadline: float) -> Resource:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FhirFetchError("the FHIR time budget ran out")
        headers = {"Accept": _FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = self._session.get(
                url,
                headers=headers,
                timeout=(min(self.connect_timeout_seconds, remaining), remaining),
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise FhirFetchError("the FHIR server did not answer in time") from exc
        except requests.RequestException as exc:
            raise FhirFetchError(
                f"the FHIR server could not be reached ({type(exc).__name__})"
            ) from exc
        if response.status_code != 200:
            raise FhirFetchError(
                f"the FHIR server answered HTTP {response.status_code}", status=response.status_code
            )
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise FhirFetchError("the FHIR server's answer was not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirFetchError("the FHIR server's answer was not a FHIR resource")
        if body["resourceType"] == "OperationOutcome":
            raise FhirFetchError("the FHIR server answered with an OperationOutcome")
        return body


def _next_link(bundle: Resource) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if (
            isinstance(link, dict)
            and link.get("relation") == "next"
            and isinstance(link.get("url"), str)
        ):
            url: str = link["url"]
            return url
    return None
