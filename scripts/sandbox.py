"""``make sandbox``: a local FHIR server with the synthetic patients, the service fetching from it,
and a smoke run that shows the two agree; then both keep running until Ctrl-C.

    .venv/bin/python scripts/sandbox.py                    # what `make sandbox` runs
    SANDBOX_EXIT=1 .venv/bin/python scripts/sandbox.py     # stop after the smoke run (the test)

1. sekmet-fhir (the FHIR server of the integration tests, in ``.venv-fhir``) on
   ``127.0.0.1:$FHIR_PORT`` (8090), its data in the sandbox folder;
2. ``hfs-cds load``: the synthetic patients, one per scenario of the mapping rules;
3. ``hfs-cds serve`` on ``$HOST:$PORT`` (127.0.0.1:8080) in development mode, allowed to fetch
   from that server without a token, its audit database in the sandbox folder (never the
   checkout's ``instance/``);
4. ``hfs-cds smoke``: every hook for every patient, with prefetch and without (the service
   fetches), each card checked against ``hfs-cds score``.

The sandbox folder is a new temporary folder, removed at the end, or ``$SANDBOX_DIR`` (kept).
The developer's own ``CDS_*``/``SMART_*`` settings and ``HFS_CDS_FHIR_TOKEN`` are not passed on,
except the model card, value sets and log level, which the service and smoke then share. Exit
status: 0 after a green smoke run (and, without ``SANDBOX_EXIT``, a Ctrl-C); 1 when a step failed;
2 when a port is taken or a variable is not usable.

This is a checkout tool, not part of the package: it starts the FHIR server through
``tests/fhir_server.py``, which the installed package must not depend on.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import the checkout's code
    sys.path.insert(0, str(REPO))

from cds_service.sandbox.fhir_http import FhirEndpoint, SandboxError  # noqa: E402
from cds_service.sandbox.smoke import find_synthetic_patients  # noqa: E402
from cds_service.security.trusted_issuers import mint_development_token  # noqa: E402
from tests.fhir_server import running_sekmet  # noqa: E402
from tests.processes import stop_process  # noqa: E402

#: Settings of the developer's environment the sandbox keeps: what the cards are computed from
#: (the service and smoke must agree on it) and how much the service logs.
KEPT_SETTINGS = ("CDS_MODEL_CARD", "CDS_VALUESETS_FILE", "CDS_LOG_LEVEL")
SERVICE_START_SECONDS = 30.0


class SandboxFailed(Exception):
    """A step failed; the message says which and where its log is. Exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Ports:
    host: str
    service: int
    fhir: int

    @property
    def service_base(self) -> str:
        return f"http://{self.host}:{self.service}"

    @property
    def fhir_base(self) -> str:
        return f"http://127.0.0.1:{self.fhir}/fhir"


def read_ports(environ: Mapping[str, str]) -> Ports:
    """``HOST``, ``PORT`` and ``FHIR_PORT`` as ``make run`` reads them; SandboxFailed if unusable."""

    def port(name: str, default: int) -> int:
        text = environ.get(name, "").strip() or str(default)
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise SandboxFailed(f"{name}={text!r} is not a TCP port (1-65535)", code=2)
        return int(text)

    ports = Ports(
        environ.get("HOST", "").strip() or "127.0.0.1", port("PORT", 8080), port("FHIR_PORT", 8090)
    )
    if ports.service == ports.fhir:
        raise SandboxFailed(f"PORT and FHIR_PORT are both {ports.fhir}: choose two ports", code=2)
    return ports


def check_free(host: str, port: int, name: str) -> None:
    """SandboxFailed naming the variable when ``host:port`` is taken (or cannot be listened on)."""
    with socket.socket() as probe:
        # As the servers will listen: a port left in TIME_WAIT by the last run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = "is taken (a `make run` or an earlier sandbox?)"
            if exc.errno != errno.EADDRINUSE:
                why = f"cannot be listened on ({exc.strerror})"
            raise SandboxFailed(
                f"port {port} on {host} {why}: choose another with {name}=…, e.g. "
                f"`{name}={port + 1} make sandbox`",
                code=2,
            ) from None


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for load, serve and smoke: without the developer's service settings, and
    with this checkout's code first (the service runs in the sandbox folder)."""
    env = {
        k: v
        for k, v in environ.items()
        if k in KEPT_SETTINGS or not (k.startswith(("CDS_", "SMART_")) or k == "HFS_CDS_FHIR_TOKEN")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    return env


def hfs_cds(*args: str) -> list[str]:
    """The command line of ``hfs-cds ARGS`` with this interpreter (the checkout's venv)."""
    return [sys.executable, "-m", "cds_service.cli", *args]


def run_step(title: str, args: list[str], env: Mapping[str, str]) -> None:
    """Print what runs (as a user would type it), run it with its output shown; fail on non-0."""
    print(f"\n== {title}\n$ hfs-cds {' '.join(args)}", flush=True)
    code = subprocess.call(hfs_cds(*args), env=dict(env), cwd=REPO)
    if code != 0:
        raise SandboxFailed(f"`hfs-cds {args[0]}` exited with status {code} (its output is above)")


@contextmanager
def running_service(
    ports: Ports, fhir_base: str, folder: Path, env: Mapping[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """``hfs-cds serve`` configured for the sandbox, its log in ``folder``; stopped afterwards."""
    settings = {
        "CDS_DEV_MODE": "1",  # http FHIR server on loopback; the development JWT issuer
        "CDS_PUBLIC_BASE_URL": ports.service_base,
        "CDS_FHIR_ALLOWLIST": fhir_base,
        "CDS_FHIR_FETCH_WITHOUT_TOKEN": "1",  # the sandbox server is open
        "CDS_INSTANCE_PATH": str(folder / "instance"),
    }
    log_path = folder / "service.log"
    args = ["serve", "--host", ports.host, "--port", str(ports.service)]
    shown = " ".join(f"{k}={v}" for k, v in settings.items())
    print(f"\n== the CDS service (log: {log_path})\n$ {shown} \\\n    hfs-cds {' '.join(args)}")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            hfs_cds(*args), env={**env, **settings}, cwd=folder, stdout=log, stderr=log
        )
    try:
        wait_until_healthy(process, f"{ports.service_base}/healthz", log_path)
        yield process
    finally:
        stop_process(process)


def wait_until_healthy(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVICE_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
            raise SandboxFailed(
                "the service exited at start:\n  " + "\n  ".join(tail) + f"\n(log: {log_path})"
            )
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SandboxFailed(f"the service did not answer {url} within {SERVICE_START_SECONDS:g} s")


def patient_view_call(ports: Ports, fhir_base: str) -> list[str]:
    """Lines of shell for one patient-view call in fetch mode (the service queries the FHIR
    server), for a patient the smoke run expects a scored card for."""
    discovery = f"{ports.service_base}/cds-services"
    token = mint_development_token(discovery)
    answer = requests.get(discovery, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    answer.raise_for_status()
    service = next(s["id"] for s in answer.json()["services"] if s["hook"] == "patient-view")
    endpoint = FhirEndpoint(fhir_base)
    try:
        patients = find_synthetic_patients(endpoint)
    finally:
        endpoint.close()
    patient = next((p for p in patients if p.expected == "scored"), patients[0])
    body = json.dumps(
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": fhir_base,
            "context": {"userId": "Practitioner/sandbox", "patientId": patient.id},
        },
        separators=(",", ":"),
    )
    return [
        f"SVC={discovery}/{service}   # {patient.key}, scenario {patient.scenario}",
        'curl -sS --fail-with-body -H "Authorization: Bearer $(.venv/bin/hfs-cds dev-token '
        '--url $SVC)" \\',
        f"     -H 'Content-Type: application/json' -d '{body}' $SVC",
    ]


def summary(ports: Ports, fhir_base: str, folder: Path, kept: bool, curl: list[str]) -> str:
    where = "kept" if kept else "removed when the sandbox stops"
    return "\n".join(
        [
            "",
            "== the sandbox is running",
            f"  FHIR server   {fhir_base}   (sekmet-fhir, open; log {folder / 'fhir' / 'sekmet.log'})",
            f"  CDS service   {ports.service_base}/cds-services   (log {folder / 'service.log'})",
            f"  sandbox folder {folder} ({where})",
            "",
            "A patient-view call without prefetch (the service fetches from the FHIR server):",
            *(f"  {line}" for line in curl),
            "",
            "Again the whole check: .venv/bin/hfs-cds smoke --fhir "
            f"{fhir_base} --service {ports.service_base}/cds-services",
            "Ctrl-C stops the service and the FHIR server.",
        ]
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, a CI runner) cleans up as Ctrl-C does


def wait_for_ctrl_c(processes: Mapping[str, Any]) -> None:
    """Until Ctrl-C, or SandboxFailed when one of the servers ends on its own."""
    while True:
        for name, process in processes.items():
            if process.poll() is not None:
                # A Ctrl-C in the terminal reaches the servers too, and one may be quicker to
                # end than this loop is to hear of it: give the KeyboardInterrupt time to arrive.
                time.sleep(1.0)
                raise SandboxFailed(f"the {name} stopped (exit status {process.returncode})")
        time.sleep(0.5)


def run(exit_after_smoke: bool, environ: Mapping[str, str]) -> int:
    ports = read_ports(environ)
    check_free(ports.host, ports.service, "PORT")
    check_free("127.0.0.1", ports.fhir, "FHIR_PORT")
    given = environ.get("SANDBOX_DIR", "").strip()
    folder = Path(given).absolute() if given else Path(tempfile.mkdtemp(prefix="hfs-cds-sandbox-"))
    env = child_environment(environ)
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            (folder / "fhir").mkdir(parents=True, exist_ok=True)
            print(f"== the FHIR server (sekmet-fhir) on {ports.fhir_base}", flush=True)
            try:
                fhir = stack.enter_context(running_sekmet(folder / "fhir", port=ports.fhir))
            except RuntimeError as exc:
                raise SandboxFailed(str(exc)) from None
            run_step("the synthetic patients", ["load", "--fhir", fhir.base, "--wait", "10"], env)
            service = stack.enter_context(running_service(ports, fhir.base, folder, env))
            discovery = f"{ports.service_base}/cds-services"
            run_step(
                "the smoke run: every hook, every patient, with and without prefetch",
                ["smoke", "--fhir", fhir.base, "--service", discovery],
                env,
            )
            print(f"\nsmoke is green, {time.monotonic() - started:.0f} s after the start")
            if exit_after_smoke:
                return 0
            curl = patient_view_call(ports, fhir.base)
            print(summary(ports, fhir.base, folder, bool(given), curl), flush=True)
            try:
                wait_for_ctrl_c({"CDS service": service, "FHIR server": fhir.process})
            except KeyboardInterrupt:
                print("\nstopping the service and the FHIR server…", flush=True)
        print("stopped" + ("" if given else f"; {folder} removed"))
        return 0
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--exit-after-smoke",
        action="store_true",
        help="stop both servers after the smoke run (also SANDBOX_EXIT=1)",
    )
    args = parser.parse_args(argv)
    exit_after = args.exit_after_smoke or os.environ.get("SANDBOX_EXIT", "") not in ("", "0")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Ctrl-C even when started with SIGINT ignored (in the background of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(exit_after, os.environ)
    except SandboxFailed as exc:
        print(f"make sandbox: {exc}", file=sys.stderr)
        return exc.code
    except (SandboxError, requests.RequestException) as exc:
        print(f"make sandbox: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("make sandbox: interrupted; the servers are stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
