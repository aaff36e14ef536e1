"""The real service as a subprocess (``hfs-cds serve``, development mode) for end-to-end tests.

Its instance folder (audit database, shared state) is in the test's own folder, never the
repository's ``instance/``; the developer's ``CDS_*`` variables are not passed on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.fhir_server import free_port
from tests.processes import stop_process

START_TIMEOUT_SECONDS = 30.0


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``url`` answers 200; RuntimeError with the log's tail if the process ends first."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited early:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT_SECONDS:g} s")


@contextmanager
def running_service(workdir: Path, **settings: str) -> Iterator[str]:
    """``hfs-cds serve`` (development mode) with these CDS_* settings; yields the discovery URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(
        CDS_DEV_MODE="1",
        CDS_PUBLIC_BASE_URL=base,
        CDS_INSTANCE_PATH=str(workdir / f"instance-{port}"),  # its audit database, not the repo's
        **settings,
    )
    log = workdir / f"service-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(f"{base}/healthz", process, log)
        yield f"{base}/cds-services"
    finally:
        stop_process(process)
