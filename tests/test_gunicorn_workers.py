"""Two gunicorn workers, one instance: the image's command (``docker/gunicorn.conf.py``, see
``test_docker_gunicorn.py``) with ``WEB_CONCURRENCY=2``. A token accepted by one worker must be
refused by the other, and a SMART launch begun in one worker must carry on in the other.

Each request goes over a fresh connection, and the test finds which worker served it from the
kernel's socket tables (``/proc``, Linux): the worker holding the server end of the connection,
still open after the answer because gunicorn keeps connections alive. The service itself is not
changed to say which process answered.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import requests

from tests.fhir_server import free_port
from tests.processes import child_pids
from tests.smart.pages import Page
from tests.smart.served import Seed
from tests.smart.shim import EhrShim
from tests.test_docker_gunicorn import image_command, image_environment, mounted_trust_list

pytest_plugins = ("tests.smart.fixtures",)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc"),
]

START_TIMEOUT_SECONDS = 30.0
TIMEOUT = 10
#: Bursts of the same request, sent in parallel over fresh connections, until both workers served.
ROUNDS = 10
BURST = 16


# -- which worker served a connection ----------------------------------------------------------------


def serving_worker(conn: http.client.HTTPConnection, workers: set[int]) -> int:
    """The worker holding the server end of ``conn`` (which must still be open)."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    server_port = conn.sock.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote = parts[1], parts[2]
        if _port(local) == server_port and _port(remote) == client_port:
            inode = parts[9]
    assert inode is not None, "the server end of the connection is not in /proc/net/tcp"
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
    raise AssertionError("no worker holds the connection")


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


# -- gunicorn with two workers -----------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str
    worker: int


@dataclass
class Gunicorn:
    """The image's gunicorn with two workers; ``workers`` are their pids."""

    base: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    workers: set[int] = field(default_factory=set)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        """GET over a new connection: the answer and the worker that served it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            body = response.read().decode()
            worker = serving_worker(conn, self.workers)
            return Answer(response.status, dict(response.getheaders()), body, worker)
        finally:
            conn.close()


@contextmanager
def two_workers(tmp: Path, **settings: str) -> Iterator[Gunicorn]:
    """Start the image's command with ``WEB_CONCURRENCY=2`` on a free loopback port; yield once
    both workers run; stop it (SIGTERM) at the end. ``settings`` may use ``{base}``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = image_environment(
        tmp / "volume",
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="2",
        CDS_PUBLIC_BASE_URL=base,
        **{name: value.format(base=base) for name, value in settings.items()},
    )
    log = tmp / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            image_command(), env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        server = Gunicorn(base, port, process, log)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            assert process.poll() is None, log.read_text()
            server.workers = child_pids(process.pid)
            with suppress(requests.ConnectionError):
                if len(server.workers) == 2 and requests.get(f"{base}/healthz", timeout=1).ok:
                    break
            assert time.monotonic() < deadline, "gunicorn did not start two workers"
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        assert process.wait(timeout=40) == 0, log.read_text()  # a graceful stop


def in_parallel(count: int, call: Callable[[], Answer]) -> list[Answer]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda _: call(), range(count)))


# -- the JWT replay cache ----------------------------------------------------------------------------


def test_a_token_works_once_whichever_worker_receives_it(tmp_path: Path) -> None:
    signer = mounted_trust_list(tmp_path)
    with two_workers(
        tmp_path, CDS_TRUSTED_ISSUERS_FILE=str(tmp_path / "trusted-issuers.json")
    ) as server:
        url = f"{server.base}/cds-services"
        for _ in range(ROUNDS):
            bearer = {"Authorization": f"Bearer {signer.sign(url)}"}
            answers = in_parallel(BURST, partial(server.get, "/cds-services", bearer))

            assert sorted(a.status for a in answers) == [200] + [401] * (BURST - 1)
            (accepted_by,) = {a.worker for a in answers if a.status == 200}
            if {a.worker for a in answers if a.status == 401} - {accepted_by}:
                break  # the other worker got the token too, and refused it
        else:
            pytest.fail("no burst reached both workers")
        assert "replayed jti" in server.log.read_text()


# -- a SMART launch across workers -------------------------------------------------------------------


@dataclass
class Browser:
    """Follows the SMART flow over fresh connections, keeping the app's cookie."""

    server: Gunicorn
    cookies: dict[str, str] = field(default_factory=dict)
    workers: list[int] = field(default_factory=list)  # who served each request, in order

    def app(self, url: str) -> Answer:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        answer = self.server.get(path, {"Cookie": cookie} if cookie else None)
        jar: SimpleCookie = SimpleCookie()
        jar.load(answer.headers.get("Set-Cookie", ""))
        self.cookies.update({name: morsel.value for name, morsel in jar.items()})
        self.workers.append(answer.worker)
        return answer

    def launch(self, shim: EhrShim, patient: str) -> str:
        """An EHR launch to the risk page: the page's path."""
        query = urlencode({"iss": shim.fhir_base, "launch": shim.new_launch(patient)})
        started = self.app(f"{self.server.base}/smart/launch?{query}")
        assert started.status == 302, started.body
        authorized = requests.get(
            started.headers["Location"], allow_redirects=False, timeout=TIMEOUT
        )
        assert authorized.status_code == 302, authorized.text
        called_back = self.app(authorized.headers["Location"])
        assert called_back.status == 303, called_back.body
        return called_back.headers["Location"]


def test_a_smart_launch_carries_on_in_the_other_worker(
    tmp_path: Path, shim: EhrShim, seed: Seed
) -> None:
    patient = f"smart-workers-{uuid.uuid4().hex[:8]}"
    seed(patient)
    # Every access token is about to expire (the app refreshes within 60 s of expiry), so every
    # page view refreshes it: in parallel, from both workers, each refresh token used once.
    shim.configure(expires_in=30)
    client_id = f"hfs-smart-{uuid.uuid4().hex[:8]}"
    with two_workers(
        tmp_path,
        CDS_DEV_MODE="1",  # http to the loopback EHR shim
        SMART_CLIENT_ID=client_id,
        SMART_ALLOWED_ISSUERS=shim.fhir_base,
        SMART_REDIRECT_URL="{base}/smart/callback",
        SMART_COOKIE_SECURE="false",
    ) as server:
        shim.register_client(client_id, [f"{server.base}/smart/callback"])
        browser = Browser(server)
        page = browser.launch(shim, patient)
        views = in_parallel(BURST, partial(browser.app, page))
        for _ in range(ROUNDS):
            if len(set(browser.workers)) == 2:
                break
            views += in_parallel(BURST, partial(browser.app, page))

    assert set(browser.workers) == server.workers, "the flow never reached both workers"
    for view in views:
        assert (view.status, Page(view.body).status) == (200, "scored"), view.body[:500]
    refreshes = [
        e
        for e in shim.requests_log()
        if e["path"] == "/token" and e["form"].get("grant_type") == "refresh_token"
    ]
    assert refreshes and all(e["status"] == 200 for e in refreshes)
    used = [e["form"]["refresh_token"] for e in refreshes]
    assert len(used) == len(set(used))  # no refresh token sent twice (the shim would refuse it)
