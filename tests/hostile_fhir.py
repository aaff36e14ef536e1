"""A hostile FHIR server in a process of its own, and the canary that proves what was never called.

``python -m tests.hostile_fhir [--canary URL]`` serves on a free loopback port and prints
``port N`` once it is ready. The first path segment chooses how it answers (the FHIR base of each
mode is ``/<mode>/fhir``):

* ``healthy``, ``healthy-a``, ``healthy-b`` … a proper searchset Bundle with a scorable record of
  the ``patient`` searched for (``tests.hook_calls.recent_patient``); ``issuer-a`` and
  ``issuer-b`` answer the same way, as the bases of two issuers on one server;
* ``bomb``: ``Content-Encoding: gzip``, 400 KB on the wire that inflate to 400 MB of valid JSON;
* ``endless``: a Bundle whose entries never end (no length, about 32 MB/s);
* ``drip``: the whole answer, status line included, one byte a second;
* ``huge``: a Bundle of 100,000 Observation entries (about 40 MB);
* ``redirect``: 302 to the canary (``--canary``);
* ``next-<variant>``: a first page for the patient whose ``next`` link escapes the base (see
  :data:`NEXT_LINKS`).

Every request but ``/_control/*`` is recorded (path, query, whether a bearer token came, bytes
sent, whether the client went away before the answer ended); ``GET /_control/log`` returns the
records as JSON and ``POST /_control/clear`` forgets them. A second instance started without
modes of interest is the canary: any record in its log is a request that should never have been
made. Tests start both through :func:`running_hostile`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_SECONDS = 30.0

BOMB_INFLATED_MB = 400
ENDLESS_BYTES_PER_SECOND = 32 * 1024 * 1024
HUGE_ENTRIES = 100_000
DRIP_SECONDS_PER_BYTE = 1.0

#: ``next`` links of the ``next-<variant>`` modes; ``{origin}`` is this server, ``{base}`` the
#: mode's own base (``{origin}/next-<variant>/fhir``), ``{canary}`` the canary's origin.
NEXT_LINKS = {
    "dots": "{base}/../../outside/fhir/Procedure?page=2",
    "encoded-dots": "{base}/%2e%2e/%2E%2E/outside/fhir/Procedure?page=2",
    "encoded-slash": "{base}/..%2f..%2foutside/fhir/Procedure?page=2",
    "semicolon": "{base}/..;/..;/outside/fhir/Procedure?page=2",
    "other-issuer": "{base}/../../issuer-a/fhir/Procedure?page=2",
    "canary": "{canary}/fhir/Procedure?page=2",
    "userinfo": "http://user:pw@{host}/next-userinfo/fhir/Procedure?page=2",
    "fragment": "{base}/Procedure?page=2#frag",
}


def _bundle_head() -> bytes:
    return b'{"resourceType":"Bundle","type":"searchset","entry":['


def _make_bomb() -> bytes:
    """A gzip member of about 400 KB that inflates to ``BOMB_INFLATED_MB`` MB of a valid Bundle
    (the padding is whitespace, which JSON allows)."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
    parts = [deflate.compress(_bundle_head())]
    padding = b" " * (1 << 20)
    for _ in range(BOMB_INFLATED_MB):
        parts.append(deflate.compress(padding))
    parts.append(deflate.compress(b"]}"))
    parts.append(deflate.flush())
    return b"".join(parts)


def _observation(patient: str, n: int) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "Observation",
            "id": f"obs-{n}",
            "meta": {"versionId": "1", "lastUpdated": "2026-05-01T10:00:00Z"},
            "status": "final",
            "code": {
                "coding": [
                    {
                        "system": "https://hfs-cds.example.org/fhir/CodeSystem/hfs-rfa",
                        "code": "hb-grade-post-rfa",
                        "display": "House-Brackmann grade after RFA",
                    }
                ]
            },
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": "2026-05-01T16:00:00+08:00",
            "valueInteger": 2,
        },
        "search": {"mode": "match"},
    }


_PATIENT_MARK = "__PATIENT__"


def _make_huge() -> bytes:
    """The huge Bundle, made once at start-up (``__PATIENT__`` stands for the patient searched)."""
    entries = [_observation(_PATIENT_MARK, n) for n in range(HUGE_ENTRIES)]
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": HUGE_ENTRIES}
    bundle["entry"] = entries
    return json.dumps(bundle, separators=(",", ":")).encode()


@dataclass
class _State:
    canary: str | None
    bomb: bytes
    records: list[dict[str, Any]]
    lock: threading.Lock
    huge: bytes


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: what a client cuts is clear

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/_control/clear":
                with state.lock:
                    state.records.clear()
                return self._send(200, b"{}")
            self._record_and_answer()

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/_control/log":
                with state.lock:
                    body = json.dumps(state.records).encode()
                return self._send(200, body)
            self._record_and_answer()

        # -- recording ------------------------------------------------------------------------

        def _record_and_answer(self) -> None:
            url = urlsplit(self.path)
            record: dict[str, Any] = {
                "path": url.path,
                "query": url.query,
                "raw": self.path,
                "bearer": (self.headers.get("Authorization") or "").startswith("Bearer "),
                "started": time.time(),
                "ended": None,
                "bytes": 0,
                "client_gone": False,
            }
            with state.lock:
                state.records.append(record)
            try:
                self._answer(url.path, parse_qs(url.query), record)
            except (BrokenPipeError, ConnectionResetError, OSError):
                record["client_gone"] = True
            finally:
                record["ended"] = time.time()

        def _write(self, data: bytes, record: dict[str, Any]) -> None:
            self.wfile.write(data)
            self.wfile.flush()
            record["bytes"] += len(data)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        # -- the modes ------------------------------------------------------------------------

        def _answer(self, path: str, query: dict[str, list[str]], record: dict[str, Any]) -> None:
            mode = path.strip("/").split("/", 1)[0]
            patient = query.get("patient", ["p1"])[0].removeprefix("Patient/")
            host = self.headers.get("Host") or "127.0.0.1"
            origin = f"http://{host}"
            if mode == "bomb":
                return self._full(
                    200, state.bomb, record, {"Content-Encoding": "gzip"}, chunk=1 << 16
                )
            if mode == "endless":
                return self._endless(record)
            if mode == "drip":
                return self._drip(record)
            if mode == "huge":
                body = state.huge.replace(_PATIENT_MARK.encode(), patient.encode())
                return self._full(200, body, record)
            if mode == "redirect":
                target = f"{state.canary or 'http://127.0.0.1:9'}/fhir/Procedure?stolen=1"
                return self._full(302, b"", record, {"Location": target})
            if mode.startswith("next-") and not query.get("page"):
                variant = mode.removeprefix("next-")
                link = NEXT_LINKS[variant].format(
                    origin=origin,
                    host=host,
                    base=f"{origin}/{mode}/fhir",
                    canary=state.canary or "http://127.0.0.1:9",
                )
                return self._full(200, self._search(path, patient, next_link=link), record)
            if mode.startswith(("healthy", "issuer-", "outside", "next-")):
                return self._full(200, self._search(path, patient), record)
            return self._full(404, b"", record)

        def _search(self, path: str, patient: str, next_link: str | None = None) -> bytes:
            from tests.hook_calls import recent_patient

            resource_type = path.rstrip("/").rsplit("/", 1)[-1]
            matches = [
                r for r in recent_patient(patient=patient) if r["resourceType"] == resource_type
            ]
            bundle: dict[str, Any] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(matches),
                "entry": [{"resource": r, "search": {"mode": "match"}} for r in matches],
            }
            if next_link:
                bundle["link"] = [{"relation": "next", "url": next_link}]
            return json.dumps(bundle).encode()

        def _full(
            self,
            status: int,
            body: bytes,
            record: dict[str, Any],
            headers: dict[str, str] | None = None,
            chunk: int = 1 << 20,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            for start in range(0, len(body), chunk):
                self._write(body[start : start + chunk], record)

        def _endless(self, record: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.end_headers()  # no length: the body ends when the connection does (never)
            self._write(_bundle_head(), record)
            entry = b'{"resource":{"resourceType":"Observation","status":"final"}},'
            block = entry * ((1 << 16) // len(entry))
            started = time.monotonic()
            while True:
                self._write(block, record)
                ahead = record["bytes"] / ENDLESS_BYTES_PER_SECOND - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

        def _drip(self, record: dict[str, Any]) -> None:
            body = _bundle_head() + b"]}"
            head = (
                "HTTP/1.0 200 OK\r\nContent-Type: application/fhir+json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            self.close_connection = True
            for byte in head + body:
                self._write(bytes([byte]), record)
                time.sleep(DRIP_SECONDS_PER_BYTE)

    return Handler


def serve(canary: str | None) -> None:
    state = _State(canary, _make_bomb(), [], threading.Lock(), _make_huge())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever(poll_interval=0.05)


# -- for tests --------------------------------------------------------------------------------------


@dataclass
class HostileFhir:
    """A running hostile server; ``origin`` is ``http://127.0.0.1:N``."""

    origin: str
    process: subprocess.Popen[bytes]

    def base(self, mode: str) -> str:
        """The FHIR base URL of a mode (``/<mode>/fhir``)."""
        return f"{self.origin}/{mode}/fhir"

    def log(self) -> list[dict[str, Any]]:
        """Every request recorded so far."""
        records: list[dict[str, Any]] = requests.get(
            f"{self.origin}/_control/log", timeout=10
        ).json()
        return records

    def clear(self) -> None:
        requests.post(f"{self.origin}/_control/clear", timeout=10).raise_for_status()

    def under(self, prefix: str) -> list[dict[str, Any]]:
        """Recorded requests whose path starts with ``prefix``."""
        return [r for r in self.log() if r["path"].startswith(prefix)]


def _start(*args: str) -> HostileFhir:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile_fhir", *args], cwd=REPO, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    ready = threading.Event()
    line: list[bytes] = []

    def read_port() -> None:
        assert process.stdout is not None
        line.append(process.stdout.readline())
        ready.set()

    threading.Thread(target=read_port, daemon=True).start()
    if not ready.wait(START_TIMEOUT_SECONDS) or not line[0].startswith(b"port "):
        process.kill()
        process.wait()
        raise RuntimeError("the hostile FHIR server did not start")
    return HostileFhir(f"http://127.0.0.1:{int(line[0].split()[1])}", process)


@contextmanager
def running_hostile() -> Iterator[tuple[HostileFhir, HostileFhir]]:
    """The hostile server and its canary (which it redirects and links to), each in a process of
    its own; both stopped at the end."""
    canary = _start()
    try:
        hostile = _start("--canary", canary.origin)
        try:
            yield hostile, canary
        finally:
            _stop(hostile.process)
    finally:
        _stop(canary.process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canary", help="origin of the canary server (redirect and next links)")
    serve(parser.parse_args().canary)
