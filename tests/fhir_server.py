"""A real FHIR R4 server process for integration tests: sekmet-fhir, in its own venv.

``make test`` installs it into ``.venv-fhir`` (pinned; it needs fhir.resources 8 of its own). The
session fixture in conftest starts one server on a free loopback port with a fresh data directory,
waits for ``/fhir/metadata`` with a bound, and stops it at the end of the session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[1]
SEKMET = Path(os.environ.get("SEKMET_BIN", REPO / ".venv-fhir" / "bin" / "sekmet"))
START_TIMEOUT_SECONDS = 30.0


@dataclass
class FhirServerProcess:
    """A running sekmet-fhir server; ``base`` is its FHIR base URL (``http://127.0.0.1:N/fhir``)."""

    base: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle; raises on any non-2xx answer."""
        response = requests.post(
            self.base, json=bundle, headers={"Content-Type": "application/fhir+json"}, timeout=30
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def put_all(self, resources: list[dict[str, Any]]) -> dict[str, Any]:
        """Store resources at their ids in one transaction (idempotent PUTs)."""
        return self.transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": r,
                        "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                    }
                    for r in resources
                ],
            }
        )

    def stop(self) -> None:
        stop_process(self.process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_sekmet(
    data_dir: Path, extra_settings: str = "", port: int | None = None
) -> Iterator[FhirServerProcess]:
    """Start sekmet-fhir on loopback with ``data_dir`` as its store; stop it afterwards.

    ``extra_settings`` is appended to its settings.yaml (e.g. ``server_auth`` for a static token).
    ``port``: a free one unless given (``make sandbox`` gives ``FHIR_PORT``).
    """
    if not SEKMET.exists():
        raise RuntimeError(
            f"sekmet-fhir is not installed at {SEKMET}; run `make test` (it installs .venv-fhir)"
        )
    port = free_port() if port is None else port
    base = f"http://127.0.0.1:{port}/fhir"
    settings = data_dir / "settings.yaml"
    settings.write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\n"
        f'data_dir: "{data_dir / "store"}"\nsimulator:\n  enabled: false\n' + extra_settings
    )
    log_path = data_dir / "sekmet.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(SEKMET), "serve", "--config", str(settings)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )
    server = FhirServerProcess(base, process, log_path)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        server.stop()


def _wait_until_ready(server: FhirServerProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"sekmet-fhir exited early; see {server.log_path}")
        try:
            if requests.get(f"{server.base}/metadata", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"sekmet-fhir did not answer within {START_TIMEOUT_SECONDS:g} s")
