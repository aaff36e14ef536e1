"""The one outbound FHIR client (``cds_service.fhir``): retries, paging, allowlist, time budget.

A scripted HTTP server on loopback answers each request with the next scripted answer (or drops
the connection), and records what it was sent. The client under test believes it talks to
``https://ehr.example.org/fhir``: its adapter's connections are routed to the scripted server, so
URLs, ``next`` links and messages look as they would against an EHR, and urllib3's retries run for
real. The hostile-server cases of the hardening issue (bombs, drips, escapes along the path) are
in ``test_fhir_hardening.py``; the URL rule and the byte cap are unit-tested here.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cds_service.fhir import (
    FhirAllowlist,
    FhirBase,
    FhirClient,
    FhirError,
    FhirTimeout,
    FhirTooLarge,
    FhirUnreachable,
    UrlRefused,
    base_problem,
    outside,
    parse_allowlist,
)

BASE = "https://ehr.example.org/fhir"
DROP = "drop"  # close the connection without an answer


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None  # sent as is instead of ``body`` as JSON


@dataclass
class Scripted:
    """Answers requests in order from ``answers``; records every request in ``seen``."""

    answers: list[Answer | str] = field(default_factory=list)
    #: URL as the client addressed it (the EHR's origin plus the path it sent), and headers.
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    port: int = 0
    origin: str = "https://ehr.example.org"

    def client(self, **options: Any) -> FhirClient:
        """A client whose every connection goes to this server, whatever the URL's host."""
        return self.route(FhirClient(**options))

    def route(self, client: FhirClient) -> FhirClient:
        """Send every connection of ``client`` to this server, whatever the URL's host."""
        for prefix in ("http://", "https://"):
            adapter: Any = client.session.get_adapter(prefix)
            setattr(  # noqa: B010 (replacing a bound method on one instance)
                adapter,
                "get_connection_with_tls_context",
                lambda *_, _a=adapter, **__: _a.poolmanager.connection_from_host(
                    "127.0.0.1", self.port, scheme="http"
                ),
            )
        return client


@contextmanager
def scripted(*answers: Answer | str) -> Iterator[Scripted]:
    state = Scripted(list(answers))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            state.seen.append((state.origin + self.path, dict(self.headers)))
            state.methods.append(self.command)
            answer = state.answers.pop(0)
            if answer == DROP or not isinstance(answer, Answer):
                self.close_connection = True
                return
            time.sleep(answer.delay)
            raw = answer.raw
            if raw is None:
                raw = b"" if answer.body is None else json.dumps(answer.body).encode()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

        do_GET = do_POST = _any  # noqa: N815 (http.server's naming)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def bundle(*ids: str, next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": {"resourceType": "Procedure", "id": i}} for i in ids],
    }


def ids(pages: Iterator[dict[str, Any]]) -> list[str]:
    return [e["resource"]["id"] for page in pages for e in page["entry"]]


# -- paging: one rule ----------------------------------------------------------------------------


def test_a_next_link_differing_only_in_host_case_is_followed() -> None:
    with scripted(
        Answer(200, bundle("a", next_url="https://EHR.Example.ORG/fhir/Procedure?page=2")),
        Answer(200, bundle("b")),
    ) as server:
        client = server.client(budget_seconds=5.0)
        assert ids(client.pages(BASE, "Procedure", "t0k")) == ["a", "b"]
    assert len(server.seen) == 2


@pytest.mark.parametrize(
    ("next_url", "reason"),
    [
        (
            "https://evil.example.com/fhir/Procedure?page=2",
            "another server (https://evil.example.com)",
        ),
        ("http://ehr.example.org/fhir/Procedure?page=2", "another server"),
        ("https://ehr.example.org:8443/fhir/Procedure?page=2", "another server"),
        ("https://ehr.example.org/other/Procedure?page=2", "outside the base path /fhir"),
        ("https://ehr.example.org/fhirx/Procedure?page=2", "outside the base path /fhir"),
        ("https://ehr.example.org/FHIR/Procedure?page=2", "outside the base path /fhir"),
    ],
)
def test_a_next_link_away_from_the_base_is_refused_with_the_reason(
    next_url: str, reason: str
) -> None:
    with scripted(Answer(200, bundle("a", next_url=next_url))) as server:
        client = server.client(budget_seconds=5.0)
        with pytest.raises(FhirError, match="points away from") as info:
            ids(client.pages(BASE, "Procedure", "t0k", query="Procedure search"))
    assert reason in str(info.value) and str(info.value).startswith("Procedure search: ")
    assert len(server.seen) == 1  # the token went nowhere else


def test_more_pages_than_the_cap_raise_instead_of_truncating() -> None:
    page2 = f"{BASE}/Procedure?page=2"
    page3 = f"{BASE}/Procedure?page=3"
    with scripted(
        Answer(200, bundle("a", next_url=page2)), Answer(200, bundle("b", next_url=page3))
    ) as server:
        client = server.client(max_pages=2, budget_seconds=5.0)
        with pytest.raises(FhirError, match="^Procedure search: more than 2 pages$"):
            ids(client.pages(BASE, "Procedure", None, query="Procedure search"))
    assert len(server.seen) == 2


def test_outside_compares_scheme_and_host_loosely_port_and_path_exactly() -> None:
    assert outside("HTTPS://EHR.example.org/fhir/x", BASE) is None
    assert outside(f"{BASE}", BASE + "/") is None
    assert outside("https://ehr.example.org:443/fhir/x", BASE) == (
        "another server (https://ehr.example.org:443)"
    )
    assert outside("https://u:p@ehr.example.org/fhir/x", BASE) == "credentials in the URL"


# -- retries: GET only ---------------------------------------------------------------------------


def test_a_get_is_retried_on_503_and_a_dropped_connection() -> None:
    with scripted(Answer(503), DROP, Answer(200, bundle("a"))) as server:
        client = server.client(budget_seconds=5.0, backoff_seconds=0.01)
        assert ids(client.pages(BASE, "Procedure", "t0k")) == ["a"]
    assert server.methods == ["GET"] * 3


def test_retries_are_bounded_and_the_last_status_is_kept() -> None:
    with scripted(Answer(503), Answer(502), Answer(504)) as server:
        client = server.client(budget_seconds=5.0, backoff_seconds=0.01)
        with pytest.raises(FhirError, match="answered HTTP 504") as info:
            client.read(f"{BASE}/Patient/p1", "t0k", query="'patient'")
    assert info.value.status == 504 and len(server.seen) == 3


def test_retries_are_logged_without_the_url(caplog: pytest.LogCaptureFixture) -> None:
    """urllib3 names the URL when it retries; a FHIR search's URL names the patient."""
    with scripted(DROP, Answer(200, bundle("a"))) as server:
        client = server.client(budget_seconds=5.0, backoff_seconds=0.01)
        with caplog.at_level(logging.DEBUG):
            assert ids(client.pages(BASE, "Procedure?patient=p-secret-7", "t0k")) == ["a"]
    assert "Retrying" in caplog.text
    assert "p-secret-7" not in caplog.text and "t0k" not in caplog.text


def test_a_redirect_is_never_followed() -> None:
    with scripted(Answer(302, headers={"Location": "https://evil.example.com/steal"})) as server:
        client = server.client(budget_seconds=5.0)
        with pytest.raises(FhirError, match="answered HTTP 302") as info:
            client.read(f"{BASE}/Patient/p1", "t0k")
    assert info.value.status == 302 and len(server.seen) == 1


def test_a_post_is_never_retried() -> None:
    transaction = {"resourceType": "Bundle", "type": "transaction"}
    with scripted(Answer(503), DROP) as server:
        client = server.client(budget_seconds=5.0, backoff_seconds=0.01)
        assert client.request("POST", BASE, None, body=transaction).status == 503
        assert len(server.seen) == 1
        with pytest.raises(FhirUnreachable, match="could not be reached"):
            client.request("POST", BASE, None, body=transaction)
    assert server.methods == ["POST", "POST"]


# -- the time budget -----------------------------------------------------------------------------


def test_a_slow_server_ends_the_call_at_its_budget() -> None:
    with scripted(Answer(200, bundle("a"), delay=1.5)) as server:
        client = server.client(budget_seconds=0.4, connect_timeout_seconds=0.2)
        started = time.monotonic()
        with pytest.raises(FhirTimeout, match="did not answer in time"):
            client.read(f"{BASE}/Procedure", None)
        assert time.monotonic() - started < 1.2  # the server would take 1.5 s
    assert len(server.seen) == 1  # a read that timed out is not retried: its budget is spent


def test_no_retry_waits_past_the_budget() -> None:
    """A 503 asking to come back in a minute is the answer, not a minute's wait."""
    with scripted(Answer(503, headers={"Retry-After": "60"})) as server:
        client = server.client(budget_seconds=1.0)
        started = time.monotonic()
        assert client.request("GET", f"{BASE}/metadata", None).status == 503
        assert time.monotonic() - started < 5.0
    assert len(server.seen) == 1


def test_the_pages_of_one_fetch_share_one_budget() -> None:
    page2 = f"{BASE}/Procedure?page=2"
    with scripted(
        Answer(200, bundle("a", next_url=page2), delay=0.6),
        Answer(200, bundle("b"), delay=0.6),
    ) as server:
        client = server.client(budget_seconds=0.8, connect_timeout_seconds=0.2)
        started = time.monotonic()
        with pytest.raises(FhirTimeout, match="in time|within"):
            client.fetch_all(BASE, {"procedures": "Procedure"}, None)
        assert time.monotonic() - started < 1.1  # each page alone fits the budget, both do not


# -- allowlist -----------------------------------------------------------------------------------


def test_allowlist_strings_split_on_commas_and_whitespace() -> None:
    raw = " https://a.example/fhir, https://b.example/r4/\n https://c.example/x ,,"
    assert parse_allowlist(raw, allow_loopback_http=False) == (
        "https://a.example/fhir",
        "https://b.example/r4",
        "https://c.example/x",
    )


@pytest.mark.parametrize(
    ("raw", "dev", "message"),
    [
        ("http://ehr.example.org/fhir", True, "http only on loopback in development mode"),
        ("http://127.0.0.1:8080/fhir", False, "http only on loopback in development mode"),
        ("ehr.example.org/fhir", True, "is not an absolute http(s) URL"),
        ("https://u:p@ehr.example.org/fhir", True, "must not carry credentials"),
    ],
)
def test_allowlist_entries_follow_one_rule(raw: str, dev: bool, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_allowlist(raw, allow_loopback_http=dev)
    assert parse_allowlist("http://127.0.0.1:8080/fhir", allow_loopback_http=True)


def test_the_allowlist_applies_the_same_rule_to_targets() -> None:
    allowlist = FhirAllowlist(("http://127.0.0.1:8080/fhir", BASE), allow_loopback_http=False)
    assert allowlist.permits(f"{BASE}/Patient/1")
    assert allowlist.permits("https://EHR.example.org/fhir")
    assert not allowlist.permits("http://127.0.0.1:8080/fhir/Patient/1")  # not in dev mode
    assert not allowlist.permits("https://ehr.example.org/fhirx")
    assert allowlist.permits("https://other.example/fhir", ("https://other.example/fhir",))


def test_a_server_off_the_allowlist_is_never_contacted() -> None:
    with scripted() as server:
        client = server.client(allowlist=FhirAllowlist(("https://other.example/fhir",)))
        with pytest.raises(FhirError, match="allowlist"):
            client.fetch_all(BASE, {"procedures": "Procedure"}, "t0k")
        with pytest.raises(FhirError, match="allowlist"):
            ids(client.pages(BASE, "Procedure", "t0k"))
    assert server.seen == []


# -- the URL rule: one parser for bases, searches and next links ------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://ehr.example.org/fhir?x=", "a query"),
        ("https://ehr.example.org/fhir?", "a query"),
        ("https://ehr.example.org/fhir#", "a fragment"),
        ("https://ehr.example.org/fhir/../outside", "a dot segment in the path"),
        ("https://ehr.example.org/fhir/./x", "a dot segment in the path"),
        ("https://ehr.example.org/fhir/..;/outside", "a dot segment in the path"),
        ("https://ehr.example.org/fhir/%2e%2e/outside", "an encoded dot"),
        ("https://ehr.example.org/fhir/%2E./outside", "an encoded dot"),
        ("https://ehr.example.org/fhir/..%2Foutside", "an encoded dot, slash"),
        ("https://ehr.example.org/fhir/%252e%252e/outside", "percent"),
        ("https://ehr.example.org/fhir/%5c..", "backslash"),
        ("https://ehr.example.org/fhir\\..\\outside", "a backslash in the path"),
        ("https://ehr.example.org/fhir/%", "an encoded dot"),
        ("https://ehr.example.org/fh ir", "spaces, control or non-ASCII characters"),
        ("https://ehr.exämple.org/fhir", "spaces, control or non-ASCII characters"),
        ("https://u:p@ehr.example.org/fhir", "credentials in the URL"),
        ("https://@ehr.example.org/fhir", "credentials in the URL"),
        ("https://ehr.example.org:99999/fhir", "not a valid host or port"),
        ("https://ehr_ex@mple/fhir", "credentials in the URL"),
        ("ftp://ehr.example.org/fhir", "not an absolute http(s) URL"),
        ("/fhir", "not an absolute http(s) URL"),
    ],
)
def test_a_base_that_could_lead_elsewhere_is_refused(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused, match=re.escape(reason)):
        FhirBase.parse(url)
    assert base_problem(url, allow_loopback_http=True) is not None


def test_a_base_has_one_normal_form() -> None:
    assert (
        FhirBase.parse("HTTPS://EHR.Example.ORG/fhir/R4//").url == "https://ehr.example.org/fhir/R4"
    )
    assert FhirBase.parse("http://[::1]:8080/fhir").host == "::1"
    assert FhirBase.parse("https://ehr.example.org").path == ""
    assert FhirBase.parse("https://ehr.example.org/fhir/obs.1/x-y_z~").path == "/fhir/obs.1/x-y_z~"
    assert parse_allowlist("HTTPS://EHR.example.org/fhir/", allow_loopback_http=False) == (
        "https://ehr.example.org/fhir",
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("https://ehr.example.org/fhir?tenant=1", "must not have a query"),
        ("https://ehr.example.org/fhir#x", "must not have a fragment"),
        ("https://ehr.example.org/fhir/../admin", "must not have a dot segment in the path"),
    ],
)
def test_allowlist_entries_that_could_lead_elsewhere_are_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_allowlist(raw, allow_loopback_http=False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"{BASE}/../admin/Procedure", "a dot segment in the path"),
        (f"{BASE}/%2e%2e/admin/Procedure", "an encoded dot"),
        (f"{BASE}/..%2fadmin/Procedure", "an encoded dot"),
        (f"{BASE}/Procedure?page=2#x", "a fragment"),
        ("Procedure?page=2", "not an absolute http(s) URL"),
    ],
)
def test_a_target_under_the_base_must_also_be_well_formed(url: str, reason: str) -> None:
    assert reason in (outside(url, BASE) or "")
    assert outside(f"{BASE}/Procedure?code=http%3A%2F%2Fsnomed.info%2Fsct%7C1", BASE) is None
    assert outside(BASE + "?_getpages=abc&_getpagesoffset=20", BASE) is None  # HAPI's next links


def test_an_issuers_own_bases_count_only_when_well_formed() -> None:
    allowlist = FhirAllowlist(())
    assert allowlist.permits(f"{BASE}/tenant-1", (BASE,))
    assert not allowlist.permits(f"{BASE}/../other", (BASE,))
    assert not allowlist.permits("https://other.example/fhir", (f"{BASE}/..",))
    with pytest.raises(UrlRefused, match="not on this service's FHIR allowlist"):
        allowlist.base_for("https://ehr.example.org/other", (BASE,))


def test_a_query_cannot_climb_out_of_the_base() -> None:
    with scripted() as server:
        client = server.client()
        with pytest.raises(FhirError, match="would leave the FHIR base"):
            client.fetch_all(BASE, {"procedures": "../admin/Procedure"}, "t0k")
        with pytest.raises(FhirError, match="would leave the FHIR base"):
            ids(client.pages(BASE, "%2e%2e/admin/Procedure", "t0k"))
    assert server.seen == []


# -- the byte cap, counted after decompression ------------------------------------------------------


def test_a_gzip_answer_is_inflated_within_the_cap() -> None:
    text = json.dumps(bundle("a")).encode()
    small = gzip.compress(text)
    two_members = gzip.compress(text[:20]) + gzip.compress(text[20:])
    large = gzip.compress(b'{"resourceType":"Bundle",' + b" " * 300_000 + b'"entry":[]}')
    with scripted(
        Answer(200, raw=small, headers={"Content-Encoding": "gzip"}),
        Answer(200, raw=two_members, headers={"Content-Encoding": "gzip"}),
        Answer(200, raw=large, headers={"Content-Encoding": "gzip"}),
    ) as server:
        client = server.client(max_response_bytes=200_000, budget_seconds=5.0)
        assert ids(client.pages(BASE, "Procedure", "t0k")) == ["a"]
        assert ids(client.pages(BASE, "Procedure", "t0k")) == ["a"]
        with pytest.raises(FhirTooLarge, match="larger than 200000 bytes") as info:
            client.read(f"{BASE}/Procedure", "t0k", query="'procedures'")
    assert info.value.status == 200 and str(info.value).startswith("'procedures': ")
    assert server.seen[0][1]["Accept-Encoding"] == "gzip, deflate"


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    with scripted(Answer(200, raw=b" " * 300_000)) as server:
        client = server.client(max_response_bytes=100_000, budget_seconds=5.0)
        with pytest.raises(FhirTooLarge):
            client.read(f"{BASE}/Procedure", "t0k")


@pytest.mark.parametrize(
    ("encoding", "raw", "message"),
    [
        ("br", b"\x00", "an encoding the service did not ask for ('br')"),
        ("gzip", b"not gzip at all", "not valid gzip"),
    ],
)
def test_an_answer_the_client_cannot_inflate_is_refused(
    encoding: str, raw: bytes, message: str
) -> None:
    with scripted(Answer(200, raw=raw, headers={"Content-Encoding": encoding})) as server:
        client = server.client(budget_seconds=5.0)
        with pytest.raises(FhirError, match=re.escape(message)):
            client.read(f"{BASE}/Procedure", "t0k")
