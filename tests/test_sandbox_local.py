"""``make sandbox`` (``scripts/sandbox.py``) as a newcomer runs it, in its stop-after-smoke mode.

The end-to-end test starts what ``make sandbox`` starts (sekmet-fhir, ``hfs-cds load``, the
service, ``hfs-cds smoke``) on free ports and checks the run is green, that everything it wrote is
in its sandbox folder and nothing in the checkout's ``instance/``, and that both servers are gone
afterwards. The quick tests check the one-line errors for ports before anything is started.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cds_service.sandbox.scenarios import SCENARIOS
from tests.fhir_server import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "sandbox.py"
HOOKS = 4
#: Loading, starting and 136 hook calls take about 6 s on a 2-core machine; the rest is slack.
TIMEOUT_SECONDS = 240


def _sandbox(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``scripts/sandbox.py ARGS`` from the checkout, with ``env`` on top of a clean environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "SANDBOX_"))}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={**base, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under ``folder`` with its size and modification time (empty if there is none)."""
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.integration
def test_the_sandbox_runs_green_and_writes_only_in_its_folder(tmp_path: Path) -> None:
    port, fhir_port = free_port(), free_port()
    folder = tmp_path / "sandbox"
    instance_before = _snapshot(REPO / "instance")

    done = _sandbox(
        {
            "PORT": str(port),
            "FHIR_PORT": str(fhir_port),
            "SANDBOX_EXIT": "1",
            "SANDBOX_DIR": str(folder),
            "CDS_INSTANCE_PATH": str(REPO / "instance"),  # a developer's setting: not used
            "CDS_FHIR_ALLOWLIST": "https://elsewhere.example/fhir",  # nor this
        }
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    calls = len(SCENARIOS) * HOOKS * 2
    assert f"Result: {calls} calls, {calls} OK, 0 MISMATCH, 0 ERROR" in done.stdout
    assert "smoke is green" in done.stdout
    assert f"{len(SCENARIOS)} patients via transaction" in done.stdout
    assert f"CDS_FHIR_ALLOWLIST=http://127.0.0.1:{fhir_port}/fhir" in done.stdout
    assert "Traceback" not in done.stderr
    assert (folder / "instance" / "hfs-cds.sqlite3").is_file()  # the audit records went here
    assert (folder / "fhir" / "sekmet.log").is_file()
    assert _snapshot(REPO / "instance") == instance_before
    assert _port_is_free(port) and _port_is_free(fhir_port)  # both servers stopped


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on, for the length of the test."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.parametrize("variable", ["PORT", "FHIR_PORT"])
def test_a_taken_port_is_one_line_before_anything_starts(
    taken_port: int, variable: str, tmp_path: Path
) -> None:
    ports = {"PORT": str(free_port()), "FHIR_PORT": str(free_port()), variable: str(taken_port)}
    done = _sandbox({**ports, "SANDBOX_DIR": str(tmp_path / "sandbox")})
    assert done.returncode == 2
    assert done.stderr.startswith(f"make sandbox: port {taken_port} on 127.0.0.1 is taken")
    assert f"{variable}={taken_port + 1} make sandbox" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "sandbox").exists()  # nothing was started, nothing written


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "80a"}, "PORT='80a' is not a TCP port"),
        ({"FHIR_PORT": "70000"}, "FHIR_PORT='70000' is not a TCP port"),
        ({"PORT": "9123", "FHIR_PORT": "9123"}, "PORT and FHIR_PORT are both 9123"),
    ],
)
def test_unusable_ports_are_one_line(env: dict[str, str], message: str) -> None:
    done = _sandbox(env)
    assert done.returncode == 2
    assert done.stderr.startswith(f"make sandbox: {message}")
    assert "Traceback" not in done.stderr
