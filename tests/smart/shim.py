"""The EHR shim process: oauth2-mock-server (npm, pinned) behaving as a SMART authorization server,
plus a FHIR front that serves ``.well-known/smart-configuration``, checks bearer tokens and proxies
to the real FHIR server (sekmet-fhir). See ``ehr_shim.mjs`` for what it checks.

``npm ci`` runs here when ``node_modules`` is missing (``make test`` runs it first, so CI does not
depend on this fallback). The process starts on free loopback ports chosen by the OS and prints
one ready line; the wait for it is bounded.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from tests.processes import stop_process

SHIM_DIR = Path(__file__).resolve().parent
SCRIPT = SHIM_DIR / "ehr_shim.mjs"
MOCK_PACKAGE = SHIM_DIR / "node_modules" / "oauth2-mock-server" / "package.json"
START_TIMEOUT_SECONDS = 20.0
NPM_TIMEOUT_SECONDS = 300.0


def ensure_node_modules() -> None:
    """``npm ci`` in tests/smart unless the pinned packages are already installed."""
    if MOCK_PACKAGE.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed; the SMART tests need Node.js 20.19+ and npm")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=SHIM_DIR,
        check=True,
        timeout=NPM_TIMEOUT_SECONDS,
    )


@dataclass
class EhrShim:
    """A running shim: the EHR's FHIR front on ``ehr_port``, the authorization server on ``auth_port``."""

    process: subprocess.Popen[bytes]
    auth_port: int
    ehr_port: int
    log_path: Path

    @property
    def fhir_base(self) -> str:
        return f"http://127.0.0.1:{self.ehr_port}/fhir"

    @property
    def fhir_base_localhost(self) -> str:
        """The same FHIR front under another site name (``localhost``), for cross-site iframes."""
        return f"http://localhost:{self.ehr_port}/fhir"

    @property
    def unlisted_base(self) -> str:
        """A FHIR base the shim would answer for, but that no test puts on the app's allowlist."""
        return f"http://127.0.0.1:{self.ehr_port}/other-fhir"

    @property
    def auth_base(self) -> str:
        return f"http://127.0.0.1:{self.auth_port}"

    def control(self, name: str, body: dict[str, Any] | None = None) -> Any:
        url = f"http://127.0.0.1:{self.ehr_port}/_control/{name}"
        if body is None and name == "log":
            response = requests.get(url, timeout=5)
        else:
            response = requests.post(url, json=body or {}, timeout=5)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Default behaviour and an empty request log (clients and launches are kept)."""
        self.control("reset")

    def configure(self, **settings: Any) -> None:
        """E.g. ``configure(authorize_error="access_denied", omit_patient=True, fhir_status=401)``."""
        self.control("config", settings)

    def register_client(
        self, client_id: str, redirect_uris: list[str], secret: str | None = None
    ) -> None:
        self.control(
            "client",
            {"client_id": client_id, "client_secret": secret, "redirect_uris": redirect_uris},
        )

    def new_launch(
        self,
        patient: str,
        *,
        app_context: str | None = None,
        need_patient_banner: bool | None = None,
    ) -> str:
        """A launch id the EHR binds to this context (delivered with the token)."""
        body: dict[str, Any] = {"patient": patient}
        if app_context is not None:
            body["appContext"] = app_context
        if need_patient_banner is not None:
            body["need_patient_banner"] = need_patient_banner
        launch: str = self.control("launch", body)["launch"]
        return launch

    def requests_log(self) -> list[dict[str, Any]]:
        """Every request the shim received since the last reset (controls excluded)."""
        entries: list[dict[str, Any]] = self.control("log")["requests"]
        return entries

    def ehr_page(self, launch: str, app_launch_url: str, host: str = "localhost") -> str:
        """The simulated EHR chart page that embeds the app in an iframe for ``launch``."""
        query = urlencode({"launch": launch, "app": app_launch_url})
        return f"http://{host}:{self.ehr_port}/ehr?{query}"

    def stop(self) -> None:
        stop_process(self.process)
        if self.process.stdout:
            self.process.stdout.close()


@contextmanager
def running_shim(fhir_upstream: str, work_dir: Path) -> Iterator[EhrShim]:
    """Start the shim in front of ``fhir_upstream``; stop it afterwards."""
    ensure_node_modules()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed; the SMART tests need Node.js 20.19+")
    log_path = work_dir / "ehr-shim.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [node, str(SCRIPT), "--fhir-upstream", fhir_upstream],
            cwd=SHIM_DIR,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    shim: EhrShim | None = None
    try:
        ready = _ready_line(process, log_path)
        shim = EhrShim(process, int(ready["authPort"]), int(ready["ehrPort"]), log_path)
        yield shim
    finally:
        if shim is not None:
            shim.stop()
        elif process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _ready_line(process: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the EHR shim exited early; see {log_path}")
        readable, _, _ = select.select([process.stdout], [], [], 0.2)
        if readable:
            line = process.stdout.readline()
            if line:
                ready: dict[str, Any] = json.loads(line)
                return ready
    raise RuntimeError(f"the EHR shim did not start within {START_TIMEOUT_SECONDS:g} s")
