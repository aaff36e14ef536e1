"""The one way the service and its tools talk to a FHIR server.

* **One session**: a pooled ``requests.Session`` whose adapter retries with ``urllib3.util.Retry``:
  GET only (a POST transaction is never sent twice), on connection errors and 429/502/503/504,
  with backoff, and never past the call's deadline. Redirects are never followed.
* **One time budget per call**: a connect timeout and a deadline every attempt and retry shares.
  ``fetch_all`` and ``follow_pages`` (the hooks and the SMART app) spend one budget on all their
  queries; a batch tool's ``request`` and each page of its ``pages`` get one each.
* **One paging rule**: ``next`` is followed only under the base of the search (:func:`outside`), at
  most ``max_pages`` pages, else :class:`FhirError` says why; a result is never silently cut short.
* **One allowlist check** when the client has one (the service); a command-line tool has none and
  contacts only the server its user named.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ReadTimeoutError, ResponseError
from urllib3.util import Retry, Timeout

from cds_service.fhir.allowlist import FhirAllowlist, outside
from cds_service.fhir.errors import (
    FhirError,
    FhirTimeout,
    FhirTooManyPages,
    FhirUnreachable,
)
from fhir_mappings import Resource, resources_from_bundle

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = (429, 502, 503, 504)
_MAX_TEXT = 300

#: The deadline of the request being sent on this thread (read by the retry and the timeout).
_deadline: ContextVar[float] = ContextVar("fhir_deadline", default=math.inf)


def _without_urls(record: logging.LogRecord) -> bool:
    """urllib3 names the request URL when it retries, and a FHIR search names the patient: the
    record is kept, the URL is not (protected health information never reaches logs)."""
    if isinstance(record.args, tuple):
        record.args = tuple("<url>" if isinstance(a, str) else a for a in record.args)
    return True


for _name in ("urllib3.connectionpool", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_without_urls)


def _left() -> float:
    return max(_deadline.get() - time.monotonic(), 0.001)


class _BudgetTimeout(Timeout):
    """The connect timeout, and every read of every attempt bounded by the deadline."""

    def __init__(self, connect: float) -> None:
        super().__init__(connect=connect, read=connect)
        self.connect_seconds = connect

    def clone(self) -> _BudgetTimeout:
        return _BudgetTimeout(self.connect_seconds)

    @property
    def connect_timeout(self) -> float:
        return min(self.connect_seconds, _left())

    @property
    def read_timeout(self) -> float:
        return _left()


class _BudgetRetry(Retry):
    """urllib3's Retry for GET only, and only when the wait ends before the deadline; a read that
    timed out is never retried (its budget is spent)."""

    def increment(  # type: ignore[override]
        self, method: str | None = None, url: str | None = None, **kw: Any
    ) -> Retry:
        error, response = kw.get("error"), kw.get("response")
        pool: Any = kw.get("_pool")
        if method == "GET" and not isinstance(error, ReadTimeoutError):
            retry = super().increment(method, url, **kw)
            wait_seconds = retry.get_backoff_time()
            if response is not None:
                wait_seconds = max(wait_seconds, retry.get_retry_after(response) or 0.0)
            if time.monotonic() + wait_seconds < _deadline.get():
                return retry
        if isinstance(error, ReadTimeoutError):
            raise error
        raise MaxRetryError(pool, url, error or ResponseError("not retried"))


@dataclass(frozen=True, slots=True)
class FhirAnswer:
    """One response: status, the FHIR resource (None if empty or not FHIR JSON) and headers."""

    status: int
    body: Resource | None
    headers: Mapping[str, str]
    problem: str | None = None  # "not JSON" or "not a FHIR resource" for a non-empty bad body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def diagnostics(self) -> str:
        """What an OperationOutcome body says (or the resource type), short and on one line."""
        return outcome_text(self.body)


class FhirClient:
    """Allowlisted, time-bounded FHIR reads, searches and (for the sandbox loader) writes."""

    def __init__(
        self,
        allowlist: FhirAllowlist | None = None,
        *,
        budget_seconds: float = 2.0,
        connect_timeout_seconds: float = 0.5,
        max_pages: int = 5,
        max_workers: int = 8,
        retries: int = 2,
        backoff_seconds: float = 0.25,
    ) -> None:
        self.allowlist = allowlist
        self.budget_seconds = budget_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.max_pages = max_pages
        retry = _BudgetRetry(
            total=retries,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}),
            backoff_factor=backoff_seconds,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=max_workers, max_retries=retry)
        self.session = requests.Session()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fhir-fetch")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()

    # -- one request ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        token: str | None,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
        query: str | None = None,
    ) -> FhirAnswer:
        """Send one request (GET retried as above) and return whatever status came back;
        FhirTimeout or FhirUnreachable when no answer came in time. Not allowlist-checked: the
        service reads through :meth:`fetch_all` and :meth:`pages`, which check the base."""
        deadline = deadline or time.monotonic() + self.budget_seconds
        if deadline <= time.monotonic():
            raise FhirTimeout("the FHIR time budget ran out", query=query)
        sent = {"Accept": FHIR_JSON, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = FHIR_JSON
        if token:
            sent["Authorization"] = f"Bearer {token}"
        budget = _deadline.set(deadline)
        try:
            response = self.session.request(
                method,
                url,
                data=None if body is None else json.dumps(body, separators=(",", ":")),
                headers=sent,
                timeout=cast(Any, _BudgetTimeout(self.connect_timeout_seconds)),
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise FhirTimeout("the FHIR server did not answer in time", query=query) from exc
        except requests.RequestException as exc:
            raise FhirUnreachable(_reason(exc), query=query) from exc
        finally:
            _deadline.reset(budget)
        return _answer(response)

    def read(
        self,
        url: str,
        token: str | None,
        *,
        deadline: float | None = None,
        query: str | None = None,
        bundle: bool = False,
    ) -> Resource:
        """The FHIR resource at ``url`` (a Bundle if ``bundle``): HTTP 200 with FHIR JSON that is
        not an OperationOutcome, else FhirError with the status. Not allowlist-checked."""
        answer = self.request("GET", url, token, deadline=deadline, query=query)
        body, status = answer.body, answer.status
        if status != 200:
            raise FhirError(f"the FHIR server answered HTTP {status}", status, query)
        if body is None:
            raise FhirError(
                f"the FHIR server's answer was {answer.problem or 'not JSON'}", 200, query
            )
        if body["resourceType"] == "OperationOutcome" or (
            bundle and body["resourceType"] != "Bundle"
        ):
            not_bundle = ", not a Bundle" if bundle else ""
            raise FhirError(
                f"the FHIR server answered with {body['resourceType']}{not_bundle}", 200, query
            )
        return body

    # -- searches ---------------------------------------------------------------------------------

    def pages(
        self,
        base: str,
        first: str | Resource,
        token: str | None,
        *,
        extra_bases: tuple[str, ...] = (),
        deadline: float | None = None,
        query: str | None = None,
    ) -> Iterator[Resource]:
        """Every Bundle page of a search: ``first`` is a query relative to ``base`` or the first
        page already in hand. ``deadline`` None gives each page a budget of its own."""
        base = base.rstrip("/")
        if self.allowlist is not None and not self.allowlist.permits(base, extra_bases):
            raise FhirError("fhirServer is not on this service's FHIR allowlist", query=query)
        page = (
            self.read(f"{base}/{first}", token, deadline=deadline, query=query, bundle=True)
            if isinstance(first, str)
            else first
        )
        count = 1
        while True:
            yield page
            next_url = _next_link(page)
            if next_url is None:
                return
            if (why := outside(next_url, base)) is not None:
                raise FhirError(
                    f"a 'next' link points away from {base} ({why}); not followed (the token "
                    "only ever goes to the base URL)",
                    query=query,
                )
            if count >= self.max_pages:
                raise FhirTooManyPages(f"more than {self.max_pages} pages", query=query)
            page = self.read(next_url, token, deadline=deadline, query=query, bundle=True)
            count += 1

    def fetch_all(
        self,
        base: str,
        queries: Mapping[str, str],
        token: str | None,
        extra_bases: tuple[str, ...] = (),
    ) -> dict[str, list[Resource]]:
        """Run each relative query against ``base`` concurrently under one budget; all results, or
        FhirError. ``extra_bases`` extend the allowlist for this call (the calling EHR's own)."""
        if self.allowlist is not None and not self.allowlist.permits(base, extra_bases):
            raise FhirError("fhirServer is not on this service's FHIR allowlist")
        deadline = time.monotonic() + self.budget_seconds
        futures = {
            key: self._pool.submit(self._query, base, key, query, token, deadline, extra_bases)
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
                future.result()  # re-raises that query's FhirError
        results: dict[str, list[Resource]] = {}
        for key, future in futures.items():
            if future not in done:
                raise FhirTimeout(
                    f"did not finish within {self.budget_seconds:g} s", query=f"'{key}'"
                )
            results[key] = future.result()
        return results

    def follow_pages(
        self, base: str, bundle: Resource, token: str | None, extra_bases: tuple[str, ...] = ()
    ) -> list[Resource]:
        """Entries of a paginated Bundle from the EHR's prefetch, following ``next`` on ``base``."""
        deadline = time.monotonic() + self.budget_seconds
        pages = self.pages(base, bundle, token, extra_bases=extra_bases, deadline=deadline)
        return [r for page in pages for r in resources_from_bundle(page)]

    def _query(
        self,
        base: str,
        key: str,
        query: str,
        token: str | None,
        deadline: float,
        extra_bases: tuple[str, ...],
    ) -> list[Resource]:
        label = f"'{key}'"
        first = self.read(f"{base.rstrip('/')}/{query}", token, deadline=deadline, query=label)
        if first.get("resourceType") != "Bundle":
            return [first]  # a read
        pages = self.pages(
            base, first, token, extra_bases=extra_bases, deadline=deadline, query=label
        )
        return [r for page in pages for r in resources_from_bundle(page)]


def search_matches(bundle: Resource) -> list[Resource]:
    """The resources a searchset page matched (not ``include`` or ``outcome`` entries)."""
    out = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        search = entry.get("search") if isinstance(entry, dict) else None
        mode = search.get("mode", "match") if isinstance(search, dict) else "match"
        if isinstance(resource, dict) and mode == "match":
            out.append(resource)
    return out


def outcome_text(body: Any) -> str:
    """What an OperationOutcome says (its diagnostics), or the resource type; short, one line."""
    if not isinstance(body, dict):
        return "no details"
    if body.get("resourceType") != "OperationOutcome":
        return f"a {body.get('resourceType', 'non-FHIR')} resource"
    parts = []
    for issue in body.get("issue") or []:
        if isinstance(issue, dict):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
            if isinstance(text, str) and text.strip():
                parts.append(text.strip())
    text = "; ".join(parts) or "an OperationOutcome without diagnostics"
    return " ".join(text.split())[:_MAX_TEXT]


def _answer(response: requests.Response) -> FhirAnswer:
    status, headers, raw = response.status_code, response.headers, response.content
    if not raw.strip():
        return FhirAnswer(status, None, headers)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return FhirAnswer(status, None, headers, "not JSON")
    fhir = isinstance(data, dict) and isinstance(data.get("resourceType"), str)
    return FhirAnswer(
        status, data if fhir else None, headers, None if fhir else "not a FHIR resource"
    )


def _next_link(bundle: Resource) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


def _reason(exc: Exception) -> str:
    """A short cause for a failed connection (never the URL: it may name a patient)."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
