"""``hfs-cds load`` against servers that refuse things: fallbacks, idempotence and clear errors.

A minimal in-memory FHIR server (``http.server`` on loopback) can refuse transactions, batches
and conditional updates, like some vendor sandboxes; other tiny servers answer 401, an HTML page,
or too slowly. The happy path through a real transaction is in ``test_sandbox_integration``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from cds_service.sandbox.bundles import iter_references
from cds_service.sandbox.fhir_http import FhirEndpoint
from cds_service.sandbox.loader import load_bundle
from cds_service.sandbox.scenarios import build_bundle, synthetic_patients
from tests.cli_runner import run_cli
from tests.fhir_server import free_port

Resource = dict[str, Any]
TODAY = date(2026, 11, 20)


def synthetic_bundle(count: int = 6, today: date = TODAY) -> Resource:
    """The first ``count`` synthetic patients (typical records and the first edge cases)."""
    return build_bundle(synthetic_patients(count=count, today=today))


# -- a minimal FHIR server ----------------------------------------------------------------------


@dataclass
class MiniFhir:
    """In-memory FHIR R4: identifier search, PUT, conditional PUT, POST with If-None-Exist, batch.

    ``refuse`` holds what it turns down: ``transaction``, ``batch``, ``conditional-update``,
    ``identifier-search``. ``answers`` holds, by Bundle type, the status and body (None: empty)
    it answers instead of processing a Bundle of that type (a refusal of some other kind).
    """

    refuse: set[str] = field(default_factory=set)
    answers: dict[str, tuple[int, Resource | None]] = field(default_factory=dict)
    base: str = ""
    store: dict[tuple[str, str], Resource] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    counter: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def matches(self, kind: str, query: str) -> list[Resource]:
        params = dict(parse_qsl(query))
        wanted = {tuple(token.split("|", 1)) for token in params.get("identifier", "").split(",")}
        return [
            r
            for (k, _), r in sorted(self.store.items())
            if k == kind
            and any((i["system"], i["value"]) in wanted for i in r.get("identifier", []))
        ]

    def write(self, kind: str, rid: str | None, resource: Resource) -> tuple[int, Resource]:
        created = rid is None or (kind, rid) not in self.store
        if rid is None:
            self.counter += 1
            rid = f"{kind.lower()}-{self.counter}"
        stored = {**resource, "id": rid, "meta": {**resource.get("meta", {}), "versionId": "1"}}
        self.store[(kind, rid)] = stored
        return (201 if created else 200), stored

    def handle(
        self, method: str, path: str, query: str, headers: Any, body: Any
    ) -> tuple[int, Any]:
        parts = [p for p in path.removeprefix("/fhir").split("/") if p]
        if method == "GET" and parts == ["metadata"]:
            return 200, {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}
        if method == "GET" and len(parts) == 1:
            if "identifier-search" in self.refuse:
                return 400, _outcome("unknown search parameter 'identifier'")
            found = self.matches(parts[0], query)
            return 200, {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(found),
                "entry": [{"resource": r, "search": {"mode": "match"}} for r in found],
            }
        self.writes.append(f"{method} {'/'.join(parts[:1]) or '(base)'}")
        if method == "POST" and not parts:
            kind = body.get("type")
            if kind in self.answers:
                return self.answers[kind]
            if kind in self.refuse:
                return 405 if kind == "transaction" else 400, _outcome(f"{kind} not supported")
            if kind != "batch":
                return 400, _outcome("only batch bundles")
            out = []
            for entry in body["entry"]:
                req = entry["request"]
                url = urlsplit(req["url"])
                status, answer = self.handle(
                    req["method"], "/fhir/" + url.path, url.query, {}, entry["resource"]
                )
                response: Resource = {"status": f"{status}"}
                if status < 300:
                    response["location"] = f"{answer['resourceType']}/{answer['id']}/_history/1"
                else:
                    response["outcome"] = answer
                out.append({"response": response})
            return 200, {"resourceType": "Bundle", "type": "batch-response", "entry": out}
        if any(r["reference"].startswith("urn:") for r in iter_references(body)):
            return 400, _outcome("unresolved urn:uuid reference outside a transaction")
        kind = parts[0]
        if method == "PUT" and len(parts) == 2:
            return self.write(kind, parts[1], body)
        if method == "PUT" and query:
            if "conditional-update" in self.refuse:
                return 400, _outcome("conditional update is not supported")
            found = self.matches(kind, query)
            return self.write(kind, found[0]["id"] if found else None, body)
        if method == "POST" and len(parts) == 1:
            condition = headers.get("If-None-Exist")
            found = self.matches(kind, condition) if condition else []
            return (200, found[0]) if found else self.write(kind, None, body)
        return 400, _outcome(f"unsupported {method} {path}")


def _outcome(text: str, code: str = "not-supported") -> Resource:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


Answer = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def serving(answer: Answer) -> Iterator[str]:
    """Serve ``answer(handler)`` for every request on a loopback port; yields the FHIR base."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _any(self) -> None:
            # The client may have given up already (the timeout tests).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                answer(self)

        do_GET = do_POST = do_PUT = _any  # noqa: N815 (http.server's naming)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _send(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]) -> None:
    raw = b"" if body is None else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.send_header("Content-Length", str(len(raw)))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(raw)


@pytest.fixture
def mini_fhir() -> Iterator[MiniFhir]:
    """A fresh in-memory FHIR server on loopback that refuses nothing until told to."""
    state = MiniFhir()

    def answer(handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length)) if length else None
        with state.lock:
            status, result = state.handle(
                handler.command, url.path, url.query, handler.headers, body
            )
        headers = {}
        if (
            status in (200, 201)
            and result
            and result.get("resourceType")
            not in (
                "Bundle",
                "CapabilityStatement",
            )
        ):
            headers["Location"] = f"{state.base}/{result['resourceType']}/{result['id']}/_history/1"
        _send(handler, status, result, headers)

    with serving(answer) as base:
        state.base = base
        yield state


def _stored(server: MiniFhir, kind: str) -> list[Resource]:
    return [r for (k, _), r in sorted(server.store.items()) if k == kind]


def _assert_references_resolved(server: MiniFhir) -> None:
    ids = {f"{k}/{i}" for k, i in server.store}
    for resource in server.store.values():
        for ref in iter_references(resource):
            assert ref["reference"] in ids, ref


# -- fallbacks -----------------------------------------------------------------------------------


def test_falls_back_to_batches_by_dependency_level_when_transactions_are_refused(
    mini_fhir: MiniFhir,
) -> None:
    mini_fhir.refuse = {"transaction"}
    bundle = synthetic_bundle()
    report = load_bundle(FhirEndpoint(mini_fhir.base), bundle)
    assert report.ok, report.render()
    assert report.path == "batch"
    assert report.totals() == (len(bundle["entry"]), 0, 0)
    assert any(
        "refused the transaction (HTTP 405: transaction not supported)" in n for n in report.notes
    )
    assert len(mini_fhir.store) == len(bundle["entry"])
    _assert_references_resolved(mini_fhir)
    observation = next(r for r in _stored(mini_fhir, "Observation") if "partOf" in r)
    assert observation["partOf"][0]["reference"].startswith("Procedure/procedure-")


def test_falls_back_to_conditional_creates_when_batches_and_conditional_updates_are_refused(
    mini_fhir: MiniFhir,
) -> None:
    mini_fhir.refuse = {"transaction", "batch", "conditional-update"}
    bundle = synthetic_bundle()
    report = load_bundle(FhirEndpoint(mini_fhir.base), bundle)
    assert report.ok, report.render()
    assert report.path == "per-resource requests"
    assert report.totals() == (len(bundle["entry"]), 0, 0)
    assert any("If-None-Exist" in note for note in report.notes)
    assert len(mini_fhir.store) == len(bundle["entry"])
    _assert_references_resolved(mini_fhir)


def test_loading_again_writes_nothing_and_changed_data_updates_in_place(
    mini_fhir: MiniFhir,
) -> None:
    mini_fhir.refuse = {"transaction"}
    endpoint = FhirEndpoint(mini_fhir.base)
    bundle = synthetic_bundle()
    load_bundle(endpoint, bundle)
    ids = set(mini_fhir.store)
    mini_fhir.writes.clear()

    again = load_bundle(endpoint, bundle)
    assert again.totals() == (0, 0, len(bundle["entry"]))
    assert again.path == "nothing to send" and mini_fhir.writes == []

    tomorrow = load_bundle(
        endpoint, synthetic_bundle(today=TODAY + timedelta(days=1)), "per-resource"
    )
    created, updated, _ = tomorrow.totals()
    assert created == 0 and updated > 0
    assert set(mini_fhir.store) == ids  # same resources, updated: no duplicates
    assert all(w.startswith("PUT") for w in mini_fhir.writes)


def test_without_identifier_search_conditional_updates_still_avoid_duplicates(
    mini_fhir: MiniFhir,
) -> None:
    mini_fhir.refuse = {"transaction", "identifier-search"}
    endpoint = FhirEndpoint(mini_fhir.base)
    bundle = synthetic_bundle(3)
    first = load_bundle(endpoint, bundle)
    assert first.ok and first.totals() == (len(bundle["entry"]), 0, 0)
    assert any("could not search Patient by identifier" in note for note in first.notes)
    second = load_bundle(endpoint, bundle)  # nothing recognised as unchanged: all rewritten
    assert second.totals() == (0, len(bundle["entry"]), 0)
    assert len(mini_fhir.store) == len(bundle["entry"])


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (501, None),  # Not Implemented, no body
        (400, _outcome("Transaction bundles are not supported by this server")),
        (404, _outcome("no transaction endpoint")),  # any status, as long as it says so
    ],
)
def test_any_way_of_saying_transactions_are_not_supported_falls_back(
    mini_fhir: MiniFhir, status: int, body: Resource | None
) -> None:
    mini_fhir.answers = {"transaction": (status, body)}
    bundle = synthetic_bundle(2)
    report = load_bundle(FhirEndpoint(mini_fhir.base), bundle)
    assert report.ok, report.render()
    assert report.path == "batch"
    assert report.totals() == (len(bundle["entry"]), 0, 0)
    assert any(
        n.startswith(f"the server refused the transaction (HTTP {status}") for n in report.notes
    )


#: A server that validates the content: what HAPI and sekmet say about a bad resource.
_INVALID = "Observation.status: minimum required = 1, but only found 0"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, _outcome(_INVALID, "invalid")),
        (422, _outcome(_INVALID, "required")),
        (400, _outcome(_INVALID, "processing")),
        (409, _outcome(_INVALID, "conflict")),
        (400, None),  # refused without saying why: still not "unsupported"
        (500, _outcome(_INVALID, "exception")),
    ],
)
def test_a_transaction_refused_for_its_data_stops_the_load_and_writes_nothing(
    mini_fhir: MiniFhir,
    status: int,
    body: Resource | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The defect of issue 16: batches and single writes after an "invalid" left half a patient."""
    mini_fhir.answers = {"transaction": (status, body)}
    code = run_cli("load", "--fhir", mini_fhir.base, "--patients", "2")
    out = capsys.readouterr().out
    assert code == 1, out
    (failure,) = [line for line in out.splitlines() if line.startswith("FAILED")]
    shown = _INVALID if body else "no details"
    assert failure.startswith(f"FAILED: the server refused the data (HTTP {status}: {shown})")
    assert "nothing was written and nothing else was tried" in failure
    assert mini_fhir.writes == ["POST (base)"]  # the one transaction, no batch, no single write
    assert mini_fhir.store == {}


def test_a_batch_refused_for_its_data_stops_before_single_writes(
    mini_fhir: MiniFhir, capsys: pytest.CaptureFixture[str]
) -> None:
    mini_fhir.answers = {"batch": (422, _outcome(_INVALID, "invalid"))}
    code = run_cli("load", "--fhir", mini_fhir.base, "--patients", "2", "--mode", "batch")
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"FAILED: the server refused the data of a batch (HTTP 422: {_INVALID})" in out
    assert mini_fhir.writes == ["POST (base)"]  # the first level's batch, then nothing
    assert mini_fhir.store == {}


def test_transaction_mode_reports_a_refusal_and_writes_nothing(
    mini_fhir: MiniFhir, capsys: pytest.CaptureFixture[str]
) -> None:
    mini_fhir.refuse = {"transaction"}
    code = run_cli("load", "--fhir", mini_fhir.base, "--patients", "2", "--mode", "transaction")
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED: the server refused the transaction (HTTP 405: transaction not supported)" in out
    assert mini_fhir.store == {}


def test_two_server_resources_with_one_identifier_stop_the_load(
    mini_fhir: MiniFhir, capsys: pytest.CaptureFixture[str]
) -> None:
    patient = synthetic_bundle(1)["entry"][0]["resource"]
    mini_fhir.write("Patient", None, patient)
    mini_fhir.write("Patient", None, patient)
    assert run_cli("load", "--fhir", mini_fhir.base, "--patients", "1") == 2
    err = capsys.readouterr().err
    assert "2 Patient resources on the server carry the identifier" in err
    assert "Traceback" not in err


def test_a_bundle_file_is_loaded_and_must_be_a_transaction(
    mini_fhir: MiniFhir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mini_fhir.refuse = {"transaction"}
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(synthetic_bundle(2)))
    assert run_cli("load", "--fhir", mini_fhir.base, "--bundle", str(path)) == 0
    assert "created, 0 updated, 0 unchanged" in capsys.readouterr().out
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "searchset"}))
    assert run_cli("load", "--fhir", mini_fhir.base, "--bundle", str(path)) == 2
    assert "needs a transaction" in capsys.readouterr().err
    assert run_cli("load", "--fhir", mini_fhir.base, "--bundle", str(path), "--seed", "3") == 2
    assert "either --bundle or --seed" in capsys.readouterr().err


# -- clear errors, never a traceback -------------------------------------------------------------


def _html(handler: BaseHTTPRequestHandler) -> None:
    raw = b"<html><body>Welcome to nginx</body></html>"
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)


def _unauthorized(handler: BaseHTTPRequestHandler) -> None:
    if handler.path.endswith("/metadata"):
        _send(handler, 200, {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}, {})
    else:
        _send(handler, 401, _outcome("login required"), {"WWW-Authenticate": "Bearer"})


def _slow(handler: BaseHTTPRequestHandler) -> None:
    time.sleep(1.5)
    _send(handler, 200, {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}, {})


@pytest.mark.parametrize(
    ("answer", "extra", "message"),
    [
        (_html, [], "answered HTTP 200 with text/html, not FHIR JSON"),
        (_unauthorized, [], "401 Unauthorized to GET http://127.0.0.1"),
        (_unauthorized, [], "it needs a bearer token (--token)"),
        (_unauthorized, ["--token", "s3cret-token"], "it refused the token"),
        (_slow, ["--timeout", "0.3"], "did not answer GET http://127.0.0.1"),
    ],
)
def test_server_problems_are_one_clear_line(
    answer: Answer, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(answer) as base:
        code = run_cli("load", "--fhir", base, "--patients", "1", *extra)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hfs-cds load: ") and message in err
    assert "Traceback" not in err and "s3cret-token" not in err


def test_an_unreachable_server_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    base = f"http://127.0.0.1:{free_port()}/fhir"
    assert run_cli("load", "--fhir", base, "--patients", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hfs-cds load: cannot reach the FHIR server at {base}")
    assert "Traceback" not in err


def test_the_token_may_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HFS_CDS_FHIR_TOKEN", "from-env")
    with serving(_unauthorized) as base:
        assert run_cli("load", "--fhir", base, "--patients", "1") == 2
    assert "it refused the token" in capsys.readouterr().err


def test_ctrl_c_prints_what_the_server_confirmed_so_far(
    mini_fhir: MiniFhir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One request per resource, stopped after three: the summary counts those three."""
    from cds_service.sandbox import loader

    mini_fhir.refuse = {"transaction", "batch"}
    write_one, written = loader._write_one, list[None]()

    def three_then_ctrl_c(*args: Any) -> None:
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(write_one(*args))

    monkeypatch.setattr(loader, "_write_one", three_then_ctrl_c)
    assert run_cli("load", "--fhir", mini_fhir.base, "--patients", "2") == 130
    out, err = capsys.readouterr()
    assert err == "hfs-cds: interrupted\n"
    assert "3 created, 0 updated, 0 unchanged" in out
    assert "note: interrupted: the counts are what the server confirmed; load again" in out
    assert len(mini_fhir.store) == 3
