"""The FHIR client's hardening in the production shape: the image's gunicorn, two workers, against
the hostile FHIR server of ``tests/hostile_fhir.py`` (issue 15, items 1 and 2).

* a gzip bomb leaves each worker's peak resident memory (``VmHWM``) under 200 MB (3.2 GiB before);
* while one EHR's calls wait on a server that sends a byte a second, another EHR's calls to a
  healthy server all succeed (before: 412 for as long as the drip lasted);
* SIGTERM under the drip stops gunicorn in under 5 s (before: gunicorn's full graceful timeout,
  30 s, because fetch threads still reading kept the workers alive).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.hostile_fhir import HostileFhir, running_hostile
from tests.jwt_factory import bearer
from tests.test_fhir_hardening import (
    BUDGET,
    ISS_A,
    ISS_HOSTILE,
    PATH,
    fallback_body,
    jwt_for,
    write_trust_list,
)
from tests.test_gunicorn_workers import two_workers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]

MEMORY_LIMIT_BYTES = 200 * 2**20


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileFhir]:
    with running_hostile() as (server, _canary):
        yield server


@dataclass
class Served:
    """The image's gunicorn (two workers) trusting EHRs A, B and the hostile one."""

    base: str
    process: subprocess.Popen[bytes]
    log: Path
    workers: set[int] = field(default_factory=set)

    def call(self, iss: str, fhir_server: str) -> tuple[int, dict[str, Any]]:
        """A patient-view call (over a fresh connection) whose data must come from
        ``fhir_server``."""
        response = requests.post(
            self.base + PATH,
            json=fallback_body(fhir_server),
            headers={"Authorization": bearer(jwt_for(iss, self.base + PATH))},
            timeout=60,
        )
        return response.status_code, response.json()


@contextmanager
def gunicorn(tmp: Path, hostile: HostileFhir) -> Iterator[Served]:
    """The image's command with two workers (``two_workers``), trusting EHRs A, B and the hostile
    one and allowlisting its healthy base; a graceful stop at the end (unless the test stopped it)."""
    with two_workers(
        tmp,
        CDS_TRUSTED_ISSUERS_FILE=str(write_trust_list(tmp / "trust.json", hostile.origin)),
        CDS_DEV_MODE="1",  # http to the loopback servers
        CDS_FHIR_ALLOWLIST=hostile.base("healthy"),
    ) as server:
        yield Served(server.base, server.process, server.log, server.workers)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, hostile: HostileFhir) -> Iterator[Served]:
    with gunicorn(tmp_path_factory.mktemp("gunicorn-hostile"), hostile) as server:
        yield server


def peak_resident_bytes(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_gzip_bomb_leaves_worker_memory_under_200_mb(
    served: Served, hostile: HostileFhir
) -> None:
    """400 KB on the wire, 400 MB inflated, four searches per call: each worker's peak resident
    memory stays under 200 MB (the unbounded client reached 3.2 GiB)."""
    answers = [served.call(ISS_HOSTILE, hostile.base("bomb")) for _ in range(4)]
    time.sleep(1.0)  # nothing may still be inflating in the background
    peaks = {pid: peak_resident_bytes(pid) for pid in served.workers}
    in_mb = {pid: f"{peak / 2**20:.0f} MB" for pid, peak in peaks.items()}
    assert max(peaks.values()) < MEMORY_LIMIT_BYTES, in_mb
    for status, body in answers:
        assert status == 412 and "larger than" in body["issue"][0]["diagnostics"], body


def test_a_drip_server_does_not_starve_another_issuers_calls(
    served: Served, hostile: HostileFhir
) -> None:
    """Four clients of the hostile EHR keep calling with a server that sends a byte a second;
    meanwhile EHR A's calls to a healthy server all get their card."""
    stop = threading.Event()
    attacks: list[int] = []

    def attack() -> None:
        while not stop.is_set():
            attacks.append(served.call(ISS_HOSTILE, hostile.base("drip"))[0])

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(4)]
    for thread in attackers:
        thread.start()
    try:
        time.sleep(BUDGET + 1.0)  # the first attacks have been answered; the drip goes on
        answers = [served.call(ISS_A, hostile.base("healthy")) for _ in range(6)]
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=30)
    assert [(status, bool(body.get("cards"))) for status, body in answers] == [(200, True)] * 6
    assert attacks and set(attacks) == {412}


def test_shutdown_under_a_drip_takes_under_5_s(tmp_path: Path, hostile: HostileFhir) -> None:
    """SIGTERM while calls wait on the drip, after others already answered 412: gunicorn ends in
    under 5 s (before: its whole 30 s graceful timeout, fetch threads still reading)."""
    with gunicorn(tmp_path, hostile) as server:
        with ThreadPoolExecutor(max_workers=4) as pool:
            answered = list(
                pool.map(lambda _: server.call(ISS_HOSTILE, hostile.base("drip"))[0], range(4))
            )
        assert answered == [412] * 4

        def call_during_shutdown() -> None:
            with suppress(requests.RequestException, ValueError):
                server.call(ISS_HOSTILE, hostile.base("drip"))

        in_flight = [threading.Thread(target=call_during_shutdown, daemon=True) for _ in range(2)]
        for thread in in_flight:
            thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=60)
        elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"{elapsed:.1f} s\n{server.log.read_text()[-2000:]}"
    assert code == 0, server.log.read_text()[-2000:]
