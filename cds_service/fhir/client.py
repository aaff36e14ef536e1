"""The one way the service and its tools talk to a FHIR server.

* **One session**: a pooled ``requests.Session`` whose adapter retries with ``urllib3.util.Retry``:
  GET only (a POST transaction is never sent twice), on connection errors and 429/502/503/504,
  with backoff, and never past the call's deadline. Redirects are never followed.
* **One time budget per call**: a connect timeout and a deadline every attempt and retry shares.
  ``fetch_all`` and ``follow_pages`` (the hooks and the SMART app) spend one budget on all their
  queries; a batch tool's ``request`` and each page of its ``pages`` get one each. When the
  deadline passes, a watchdog shuts the call's sockets: a server that sends one byte a second (or
  its status line that slowly) cannot keep a thread reading after the caller has its answer.
* **One byte cap per answer** (``max_response_bytes``, counted after gzip/deflate decompression,
  which the client does itself with a bounded inflater): a larger answer is refused as soon as it
  passes the cap, and its connection closed. An encoding the client did not ask for is refused.
* **Bounded fetches per issuer**: ``fetch_all`` and ``follow_pages`` hold one of the calling
  EHR's ``max_fetches_per_issuer`` permits per query (waiting at most until the deadline), so one
  EHR's slow server cannot take every fetch thread. Fetches run on daemon threads: a process
  that exits never waits on one.
* **One URL rule** (:mod:`.urls`): bases, searches and ``next`` links are parsed and checked in
  one place; ``next`` is followed only under the base of the search, at most ``max_pages`` pages,
  else :class:`FhirError` says why; a result is never silently cut short.
* **One allowlist check** when the client has one (the service); a command-line tool has none and
  contacts only the server its user named.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import os
import queue
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError, MaxRetryError, ReadTimeoutError, ResponseError
from urllib3.util import Retry, Timeout

from cds_service.fhir.allowlist import FhirAllowlist
from cds_service.fhir.errors import (
    FhirError,
    FhirTimeout,
    FhirTooLarge,
    FhirTooManyPages,
    FhirUnreachable,
)
from cds_service.fhir.urls import FhirBase, UrlRefused
from fhir_mappings import Resource, resources_from_bundle

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = (429, 502, 503, 504)
#: The most an answer may hold, decompressed. A patient's searches narrowed to the model's codes
#: answer in kilobytes; this leaves room for long histories and for the tools' larger pages.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Fetches one EHR (one issuer; without one, one FHIR base) may have in flight in a process: one
#: hook call's searches at once.
DEFAULT_MAX_FETCHES_PER_ISSUER = 4
_MAX_TEXT = 300
_CHUNK = 64 * 1024
_T = TypeVar("_T")

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


# -- the deadline watchdog ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Call:
    """One request in flight: its deadline and the connections it used."""

    deadline: float
    connections: list[Any] = field(default_factory=list)
    done: bool = False
    cut: bool = False


#: The request being sent on this thread; its connections register with it (``_Watched*``).
_call: ContextVar[_Call | None] = ContextVar("fhir_call", default=None)


class _Watchdog:
    """One daemon thread per process that shuts the sockets of calls whose deadline has passed.

    A socket timeout bounds each wait for a byte, not a call: a server that sends a byte just
    before each timeout would hold the thread forever. Shutting the socket down wakes the reading
    thread at once (with an end of stream or an error), and the connection is never reused.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked worker starts its own thread

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)
        self._queue: list[tuple[float, int, _Call]] = []
        self._order = itertools.count()
        self._running = False

    def watch(self, call: _Call) -> None:
        with self.lock:
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="fhir-deadlines", daemon=True).start()
            heapq.heappush(self._queue, (call.deadline, next(self._order), call))
            if self._queue[0][2] is call:
                self._wake.notify()

    def register(self, connection: Any) -> None:
        """Called by a connection about to connect or send a request for the current call."""
        call = _call.get()
        if call is not None:
            with self.lock:
                connection.hfs_fhir_call = call
                call.connections.append(connection)

    def finish(self, call: _Call) -> None:
        with self.lock:
            call.done = True
            call.connections.clear()

    def _run(self) -> None:
        with self.lock:
            while True:
                now = time.monotonic()
                while self._queue and self._queue[0][0] <= now:
                    call = heapq.heappop(self._queue)[2]
                    if not call.done:
                        self._cut(call)
                self._wake.wait(self._queue[0][0] - now if self._queue else None)

    @staticmethod
    def _cut(call: _Call) -> None:
        call.cut = True
        for connection in call.connections:
            sock = connection.sock
            # Only while the connection still serves this call (not once back in the pool and
            # taken by another), and on the socket itself (for TLS, under the TLS layer).
            if getattr(connection, "hfs_fhir_call", None) is call and isinstance(
                sock, socket.socket
            ):
                with suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()


class _WatchedHTTPConnection(HTTPConnection):
    """A connection the watchdog knows about before it connects or sends."""

    def connect(self) -> None:
        _WATCHDOG.register(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _WATCHDOG.register(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """The same, for TLS: by the MRO, HTTPSConnection's connect runs inside the one above."""


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections the watchdog can shut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPConnectionPool,
            "https": _WatchedHTTPSConnectionPool,
        }


# -- reading an answer within the byte cap -----------------------------------------------------------


class _Inflater:
    """gzip or zlib-wrapped deflate (told apart by their headers), inflated a piece at a time and
    never past the cap: a bomb is refused at the cap, not inflated first."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(32 + zlib.MAX_WBITS)

    def inflate_into(self, body: bytearray, data: bytes, cap: int) -> None:
        """Append the output of ``data`` to ``body``, stopping once ``body`` passes ``cap``."""
        while data and len(body) <= cap:
            if self._d.eof:  # a further gzip member (RFC 1952 allows several)
                self._d = zlib.decompressobj(32 + zlib.MAX_WBITS)
            body += self._d.decompress(data, min(cap + 1 - len(body), _CHUNK))
            data = self._d.unconsumed_tail or (self._d.unused_data if self._d.eof else b"")


def _read_body(response: requests.Response, cap: int, query: str | None) -> bytearray:
    """The whole body of a streamed answer, decompressed, or FhirTooLarge past ``cap`` bytes."""
    coding = response.headers.get("Content-Encoding", "").strip().lower()
    inflater = _Inflater() if coding in ("gzip", "x-gzip", "deflate") else None
    if inflater is None and coding not in ("", "identity"):
        raise FhirError(
            f"the FHIR server's answer came in an encoding the service did not ask for "
            f"({coding[:20]!r})",
            response.status_code,
            query,
        )
    declared = response.headers.get("Content-Length", "")
    if inflater is None and declared.isdigit() and int(declared) > cap:
        raise _too_large(cap, response.status_code, query)
    body = bytearray()
    while chunk := response.raw.read(_CHUNK, decode_content=False):
        if inflater is None:
            body += chunk
        else:
            try:
                inflater.inflate_into(body, chunk, cap)
            except zlib.error:
                raise FhirError(
                    f"the FHIR server's answer is not valid {coding}", response.status_code, query
                ) from None
        if len(body) > cap:
            del body  # not kept alive by the exception's traceback
            raise _too_large(cap, response.status_code, query)
    return body


def _too_large(cap: int, status: int, query: str | None) -> FhirTooLarge:
    return FhirTooLarge(
        f"the FHIR server's answer is larger than {_size(cap)}, the most the service reads",
        status,
        query,
    )


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


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
    """Allowlisted, time- and size-bounded FHIR reads, searches and (for the sandbox loader)
    writes."""

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
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_fetches_per_issuer: int = DEFAULT_MAX_FETCHES_PER_ISSUER,
    ) -> None:
        self.allowlist = allowlist
        self.budget_seconds = budget_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self.max_fetches_per_issuer = max_fetches_per_issuer
        retry = _BudgetRetry(
            total=retries,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}),
            backoff_factor=backoff_seconds,
            raise_on_status=False,
        )
        # Connections kept per server; fetches beyond them open (and then drop) their own.
        adapter = _WatchedAdapter(pool_connections=8, pool_maxsize=max_workers, max_retries=retry)
        self.session = requests.Session()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._permits: dict[str, threading.BoundedSemaphore] = {}
        self._permits_lock = threading.Lock()

    def close(self) -> None:
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
        """Send one request (GET retried as above) and return whatever status came back, its
        body read within the byte cap; FhirTimeout or FhirUnreachable when no whole answer came
        in time, FhirTooLarge past the cap. Not allowlist-checked: the service reads through
        :meth:`fetch_all` and :meth:`follow_pages`, which check the base."""
        deadline = deadline or time.monotonic() + self.budget_seconds
        if deadline <= time.monotonic():
            raise FhirTimeout("the FHIR time budget ran out", query=query)
        # Only encodings the client inflates itself, within the cap.
        sent = {"Accept": FHIR_JSON, "Accept-Encoding": "gzip, deflate", **(headers or {})}
        if body is not None:
            sent["Content-Type"] = FHIR_JSON
        if token:
            sent["Authorization"] = f"Bearer {token}"
        call = _Call(deadline)
        budget, current = _deadline.set(deadline), _call.set(call)
        _WATCHDOG.watch(call)
        try:
            response = self.session.request(
                method,
                url,
                data=None if body is None else json.dumps(body, separators=(",", ":")),
                headers=sent,
                timeout=cast(Any, _BudgetTimeout(self.connect_timeout_seconds)),
                allow_redirects=False,
                stream=True,
            )
            try:
                raw = _read_body(response, self.max_response_bytes, query)
            except BaseException:
                response.close()  # a body not read to its end: the connection is closed
                raise
            # Read to its end: the connection goes back to the pool for the next query (closing
            # the response would close it, and every query would open a new one).
            response.raw.release_conn()
        except requests.Timeout as exc:
            raise FhirTimeout("the FHIR server did not answer in time", query=query) from exc
        except (requests.RequestException, HTTPError, OSError) as exc:
            if call.cut or time.monotonic() >= deadline:
                raise FhirTimeout("the FHIR server did not answer in time", query=query) from exc
            raise FhirUnreachable(_reason(exc), query=query) from exc
        finally:
            _WATCHDOG.finish(call)
            _call.reset(current)
            _deadline.reset(budget)
        return _answer(response.status_code, response.headers, raw)

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
        root = self._base(base, extra_bases, query)
        if isinstance(first, str):
            url = self._under(root, first, query)
            first = self.read(url, token, deadline=deadline, query=query, bundle=True)
        return self._follow(root, first, token, deadline, query)

    def _follow(
        self,
        root: FhirBase,
        page: Resource,
        token: str | None,
        deadline: float | None,
        query: str | None,
    ) -> Iterator[Resource]:
        count = 1
        while True:
            yield page
            next_url = _next_link(page)
            if next_url is None:
                return
            try:
                root.target(next_url)
            except UrlRefused as exc:
                raise FhirError(
                    f"a 'next' link points away from {root} ({exc.reason}); not followed (the "
                    "token only ever goes to the base URL)",
                    query=query,
                ) from None
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
        *,
        issuer: str | None = None,
    ) -> dict[str, list[Resource]]:
        """Run each relative query against ``base`` concurrently under one budget; all results, or
        FhirError. ``extra_bases`` extend the allowlist for this call (the calling EHR's own);
        ``issuer`` names that EHR, whose fetches in flight are bounded (see the module)."""
        root = self._base(base, extra_bases)
        urls = {key: self._under(root, query, f"'{key}'") for key, query in queries.items()}
        deadline = time.monotonic() + self.budget_seconds
        permits = self._permits_of(issuer or root.url)
        futures: dict[str, Future[list[Resource]]] = {}
        try:
            for key, url in urls.items():
                self._acquire(permits, deadline, f"'{key}'")
                futures[key] = _in_thread(
                    partial(self._query, root, key, url, token, deadline), permits.release
                )
        except FhirError:
            for future in futures.values():
                future.cancel()
            raise
        done, _ = wait(
            futures.values(),
            timeout=max(deadline - time.monotonic(), 0.0),
            return_when=FIRST_EXCEPTION,
        )
        # A query that failed explains more than one cut short because of it: report it first.
        error = next((e for f in done if (e := f.exception()) is not None), None)
        late = next((key for key, f in futures.items() if f not in done), None)
        results = {key: f.result() for key, f in futures.items()} if not (error or late) else {}
        # The futures hold the failed query's exception (and its traceback, its answer's body):
        # no reference cycle through this frame may keep them past the call.
        del futures, done
        if error is not None:
            try:
                raise error
            finally:
                del error
        if late is not None:
            raise FhirTimeout(f"did not finish within {self.budget_seconds:g} s", query=f"'{late}'")
        return results

    def follow_pages(
        self,
        base: str,
        bundle: Resource,
        token: str | None,
        extra_bases: tuple[str, ...] = (),
        *,
        issuer: str | None = None,
    ) -> list[Resource]:
        """Entries of a paginated Bundle from the EHR's prefetch, following ``next`` on ``base``
        (one of ``issuer``'s fetch permits held meanwhile)."""
        root = self._base(base, extra_bases)
        deadline = time.monotonic() + self.budget_seconds
        permits = self._permits_of(issuer or root.url)
        self._acquire(permits, deadline, None)
        try:
            pages = self._follow(root, bundle, token, deadline, None)
            return [r for page in pages for r in resources_from_bundle(page)]
        finally:
            permits.release()

    def _query(
        self, root: FhirBase, key: str, url: str, token: str | None, deadline: float
    ) -> list[Resource]:
        label = f"'{key}'"
        first = self.read(url, token, deadline=deadline, query=label)
        if first.get("resourceType") != "Bundle":
            return [first]  # a read
        pages = self._follow(root, first, token, deadline, label)
        return [r for page in pages for r in resources_from_bundle(page)]

    # -- where, and how many at once ---------------------------------------------------------------

    def _base(self, base: str, extra_bases: tuple[str, ...], query: str | None = None) -> FhirBase:
        """``base`` parsed, and allowed when the client has an allowlist; FhirError if not (the
        URL itself is never repeated: a hook's ``fhirServer`` is the EHR's input)."""
        try:
            if self.allowlist is not None:
                return self.allowlist.base_for(base, extra_bases)
            return FhirBase.parse(base)
        except UrlRefused as exc:
            if exc.kind == "allowlist":
                raise FhirError(
                    "fhirServer is not on this service's FHIR allowlist", query=query
                ) from None
            raise FhirError(
                f"the FHIR base URL has {exc.reason}; not contacted", query=query
            ) from None

    @staticmethod
    def _under(root: FhirBase, relative: str, query: str | None) -> str:
        try:
            return root.join(relative)
        except UrlRefused as exc:
            raise FhirError(
                f"the query would leave the FHIR base ({exc.reason}); not sent", query=query
            ) from None

    def _permits_of(self, caller: str) -> threading.BoundedSemaphore:
        with self._permits_lock:
            permits = self._permits.get(caller)
            if permits is None:
                permits = self._permits[caller] = threading.BoundedSemaphore(
                    self.max_fetches_per_issuer
                )
            return permits

    def _acquire(
        self, permits: threading.BoundedSemaphore, deadline: float, query: str | None
    ) -> None:
        if not permits.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise FhirTimeout(
                f"this EHR already had {self.max_fetches_per_issuer} FHIR fetches in flight "
                f"for {self.budget_seconds:g} s",
                query=query,
            )


class _FetchThreads:
    """Daemon threads for fetches: a process that exits never waits on one (each is cut at its
    deadline anyway). A thread is reused once idle and another started only when none is, so
    there are as many as fetches ever ran at once: starting a thread per fetch waits for the new
    thread to take the GIL, about a millisecond per fetch on a busy worker."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # threads do not survive a fork

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._idle = 0

    def submit(self, future: Future[_T], work: Callable[[], _T]) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # that thread takes this work
        self._work.put((future, work))
        if start:
            threading.Thread(target=self._serve, name="fhir-fetch", daemon=True).start()

    def _serve(self) -> None:
        while True:
            future, work = self._work.get()
            _run(future, work)
            del future, work  # nothing of a finished fetch stays alive while idle
            with self._lock:
                self._idle += 1


_FETCH_THREADS = _FetchThreads()


def _in_thread(work: Callable[[], _T], release: Callable[[], None]) -> Future[_T]:
    """Run ``work`` on a fetch thread; ``release`` runs once it is done or cancelled."""
    future: Future[_T] = Future()
    future.add_done_callback(lambda _: release())
    _FETCH_THREADS.submit(future, work)
    return future


def _run(future: Future[_T], work: Callable[[], _T]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = work()
    except BaseException as exc:  # handed to the waiting caller
        future.set_exception(exc)
        del future  # no cycle: exception -> traceback -> this frame -> future -> exception
    else:
        future.set_result(result)


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


def _answer(status: int, headers: Mapping[str, str], raw: bytearray) -> FhirAnswer:
    if not raw or raw.isspace():
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
