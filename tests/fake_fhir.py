"""A small real HTTP FHIR endpoint on loopback for the prefetch-fallback tests.

It answers ``GET {base}/{Type}?patient=…`` searches from an in-memory list with paging, records every
request (path, query, Authorization header) and can be told to fail: slow, 5xx, HTML, bad JSON.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Resource = dict[str, Any]


@dataclass
class SeenRequest:
    path: str
    query: dict[str, list[str]]
    authorization: str | None


@dataclass
class FakeFhirServer:
    base: str = ""
    resources: list[Resource] = field(default_factory=list)
    page_size: int = 100
    fault: str | None = None  # None | "slow" | "500" | "html" | "garbage" | "outcome" | "redirect"
    delay_seconds: float = 0.0
    seen: list[SeenRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def search(self, resource_type: str, query: dict[str, list[str]]) -> list[Resource]:
        patient = query.get("patient", [""])[0].removeprefix("Patient/")
        return [
            r
            for r in self.resources
            if r.get("resourceType") == resource_type
            and r.get("subject", {}).get("reference") == f"Patient/{patient}"
        ]


def _handler(server_state: FakeFhirServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            state = server_state
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            with state.lock:
                state.seen.append(SeenRequest(url.path, query, self.headers.get("Authorization")))
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                if state.delay_seconds:
                    time.sleep(state.delay_seconds)
                self._answer(state, url.path, query)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _answer(self, state: FakeFhirServer, path: str, query: dict[str, list[str]]) -> None:
            if state.fault == "500":
                return self._send(500, b"{}", "application/fhir+json")
            if state.fault == "html":
                return self._send(200, b"<html>Login</html>", "text/html")
            if state.fault == "garbage":
                return self._send(
                    200, b'{"resourceType": "Bundle", "entry": [', "application/fhir+json"
                )
            if state.fault == "redirect":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.2:9/steal")
                self.end_headers()
                return None
            if state.fault == "outcome":
                outcome = {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "forbidden"}],
                }
                return self._send(200, json.dumps(outcome).encode(), "application/fhir+json")
            resource_type = path.rsplit("/", 1)[-1]
            matches = state.search(resource_type, query)
            offset = int(query.get("_offset", ["0"])[0])
            page = matches[offset : offset + state.page_size]
            bundle: Resource = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(matches),
                "entry": [{"resource": r} for r in page],
                "link": [],
            }
            if offset + state.page_size < len(matches):
                rest = "&".join(f"{k}={v[0]}" for k, v in query.items() if k != "_offset")
                next_url = f"{state.base}/{resource_type}?{rest}&_offset={offset + state.page_size}"
                bundle["link"].append({"relation": "next", "url": next_url})
            if not bundle["link"]:
                del bundle["link"]
            return self._send(200, json.dumps(bundle).encode(), "application/fhir+json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The service may have given up waiting (the timeout tests want exactly that).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    return Handler


@contextmanager
def running_fake_fhir(resources: list[Resource] | None = None) -> Iterator[FakeFhirServer]:
    """Serve a FakeFhirServer on 127.0.0.1 (a free port) for the duration of the block."""
    state = FakeFhirServer(resources=list(resources or []))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}/fhir"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
