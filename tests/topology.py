"""The production topology on one machine, without Docker: PostgreSQL, two replicas and nginx.

* **PostgreSQL**: a database on a server the caller gives (the test session's ``postgres_server``),
  else a throwaway cluster of Debian's binaries (:func:`tests.postgres.throwaway_cluster`), migrated
  once before the replicas start, as ``hfs-cds db upgrade`` does in a release.
* **Two replicas**, each exactly the image's command (``gunicorn --config docker/gunicorn.conf.py``
  with the image's ``ENV``, :func:`tests.test_docker_gunicorn.image_command`) on its own loopback
  port, both on that database (``CDS_DATABASE_URL``), each with its own instance folder (the image's
  volume). Each runs in its own process group, so :meth:`Replica.kill` takes the master and its
  workers down at once, as when a container or its host dies.
* **nginx** with ``docker/nginx/templates/default.conf.template``, the file the compose file
  mounts, rendered the way nginx's official image renders it (envsubst of the variables given,
  :func:`render_template`), included from a small ``nginx.conf`` that keeps every path in the
  scratch folder (no daemon, no system service, no /var/log).

``CDS_PUBLIC_BASE_URL`` is the front door's URL: JWT audiences and SMART redirects are computed
from it by every replica. Used by the topology tests (``tests/test_topology*.py``), the benchmark's
load-balancer row (``bench/run_bench.py``) and ``make topology`` (``scripts/topology.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from cds_service.security.trusted_issuers import SigningKey
from cds_service.store import open_engine, upgrade
from tests.fhir_server import free_port
from tests.hook_calls import SERVICE_IDS, hook_body, recent_patient
from tests.postgres import PostgresServer, throwaway_cluster
from tests.processes import child_pids
from tests.test_docker_files import DOCKER
from tests.test_docker_gunicorn import image_command, image_environment

NGINX_TEMPLATE = DOCKER / "nginx" / "templates" / "default.conf.template"
START_TIMEOUT_SECONDS = 40.0
INSTALL_HINT = "install it with 'apt-get install -y nginx' (or run scripts/ci-nginx.sh)"


class TopologyUnavailable(RuntimeError):
    """A part of the topology could not start; the message says which and why."""


# -- nginx ---------------------------------------------------------------------------------------------


def render_template(text: str, values: Mapping[str, str]) -> str:
    """``text`` with ``$NAME`` and ``${NAME}`` replaced for each ``NAME`` in ``values`` only.

    What the official nginx image does to /etc/nginx/templates (envsubst restricted to the
    variables defined in its environment), so nginx's own ``$variables`` are left alone.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values[name] if name in values else match.group(0)

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", replace, text)


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        raise TopologyUnavailable(f"nginx is not installed: {INSTALL_HINT}")
    return found


def nginx_main_config(work: Path, include: Path, temp: Path) -> str:
    """The outer ``nginx.conf``: what the official image's own file provides, with every path in
    ``work`` but the temporary files' folder ``temp`` (see :meth:`LoadBalancer.start`)."""
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    return f"""# Written by tests/topology.py; the server block is {include.name}, rendered from
# {NGINX_TEMPLATE.relative_to(DOCKER.parent)}.
daemon off;
{user}
worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {include};
}}
"""


@dataclass
class LoadBalancer:
    """nginx in the foreground, configured from the compose file's template."""

    work: Path
    port: int
    upstreams: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    temp: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.work / "access.log"

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        values = {"LB_LISTEN": f"127.0.0.1:{self.port}"}
        values.update({f"LB_REPLICA_{i}": u for i, u in enumerate(self.upstreams, start=1)})
        server = self.work / "default.conf"
        server.write_text(render_template(NGINX_TEMPLATE.read_text(), values))
        # Bodies over client_body_buffer_size go to a file. As root, nginx's workers run as
        # nobody, who cannot enter pytest's private folders: their temporary files get a folder
        # of their own under /tmp.
        self.temp = Path(tempfile.mkdtemp(prefix="hfs-cds-nginx-"))
        if os.geteuid() == 0:
            shutil.chown(self.temp, user="nobody", group="nogroup")
        config = self.work / "nginx.conf"
        config.write_text(nginx_main_config(self.work, server, self.temp))
        command = [nginx_binary(), "-p", str(self.work), "-e", str(self.work / "error.log")]
        checked = subprocess.run(
            [*command, "-t", "-c", str(config)], capture_output=True, text=True, timeout=30
        )
        if checked.returncode != 0:
            raise TopologyUnavailable(f"nginx refused its configuration: {checked.stderr[-800:]}")
        with self.access_log.open("ab") as out:  # access lines go to nginx's stdout
            self.process = subprocess.Popen(
                [*command, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise TopologyUnavailable(
                    "nginx did not start: " + (self.work / "error.log").read_text()[-800:]
                )
            time.sleep(0.05)

    def logged(self, since: int, count: int, timeout: float = 5.0) -> str:
        """The access log after byte ``since`` once it holds ``count`` lines: nginx writes a
        request's line just after sending the answer, so a client may read it first."""
        deadline = time.monotonic() + timeout
        while True:
            with self.access_log.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
            if text.count("\n") >= count or time.monotonic() > deadline:
                return text
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish requests in flight
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- the replicas --------------------------------------------------------------------------------------


@dataclass
class Replica:
    """The image's gunicorn command on one loopback port, in its own process group."""

    name: str
    port: int
    env: dict[str, str]
    work: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.work / "gunicorn.log"

    @property
    def workers(self) -> int:
        return int(self.env.get("WEB_CONCURRENCY", "2"))

    def start(self) -> None:
        """Start the command (not waiting for it: see :meth:`wait_ready`)."""
        self.work.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                image_command(),
                env=self.env,
                cwd=self.work,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own: kill() stops it all
            )
        self.starts += 1

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> float:
        """Wait until ``/readyz`` answers 200 and every worker runs; the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise TopologyUnavailable(
                    f"replica {self.name} exited ({self.process.returncode}): "
                    + self.log.read_text(errors="replace")[-1500:]
                )
            with suppress(requests.RequestException):
                ready = requests.get(f"{self.base}/readyz", timeout=1).status_code == 200
                if ready and len(child_pids(self.process.pid)) == self.workers:
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TopologyUnavailable(f"replica {self.name} was not ready in {timeout:.0f} s")
            time.sleep(0.05)

    def readiness(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        """``GET /readyz`` on this replica directly (one of its workers answers): the status and
        the body (empty when it is not JSON; status 0 when there is no answer)."""
        try:
            answer = requests.get(f"{self.base}/readyz", timeout=timeout)
        except requests.RequestException:
            return 0, {}
        try:
            body = answer.json()
        except ValueError:
            body = {}
        return answer.status_code, body if isinstance(body, dict) else {}

    def terminate(self) -> None:
        """SIGTERM to gunicorn's master, as ``docker stop`` sends it: a graceful stop."""
        assert self.process is not None
        self.process.terminate()

    def kill(self) -> None:
        """SIGKILL to the whole replica (master and workers), as when its host dies."""
        assert self.process is not None
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=15)

    def wait_stopped(self, timeout: float = 45.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        # Workers are in the group too; none may outlive the master.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate()
            try:
                self.wait_stopped()
            except subprocess.TimeoutExpired:
                self.kill()


# -- the whole -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    """Where each part listens; 0 means a free port."""

    front: int = 0
    replicas: tuple[int, int] = (0, 0)
    postgres: int = 0


@dataclass
class Topology:
    base: str  # the front door, also CDS_PUBLIC_BASE_URL
    database_url: str
    replicas: list[Replica]
    balancer: LoadBalancer
    work: Path
    logs: list[Path] = field(default_factory=list)

    def routed(self, since: int = 0, count: int = 0) -> list[tuple[str, str]]:
        """(replica address, its status) of each attempt nginx made, from its access log after
        byte ``since`` (once it logged ``count`` requests); a request resent to the other
        replica shows both attempts."""
        return [(address, status) for _, address, status in self.attempts(since, count)]

    def attempts(self, since: int = 0, count: int = 0) -> list[tuple[float, str, str]]:
        """:meth:`routed` with the time each request ended (``time.time()`` seconds)."""
        lines = self.balancer.logged(since, count).splitlines()
        attempts: list[tuple[float, str, str]] = []
        for line in lines:
            with suppress(ValueError, KeyError):
                entry = json.loads(line)
                addresses = str(entry.get("upstream", "")).split(", ")
                statuses = str(entry.get("upstream_status", "")).split(", ")
                ended = float(entry["msec"])
                attempts += [(ended, a, s) for a, s in zip(addresses, statuses, strict=False) if a]
        return attempts

    def wait_routed(self, replica: Replica, timeout: float = 10.0) -> float:
        """Wait until nginx sends requests to ``replica`` again (after a restart it may still
        count it as failed for ``fail_timeout``); the seconds it took. Sends GET /healthz through
        the front door meanwhile."""
        started = time.monotonic()
        since = self.balancer.access_log.stat().st_size
        while (replica.address, "200") not in self.routed(since):
            if time.monotonic() - started > timeout:
                raise TopologyUnavailable(f"nginx sent nothing to {replica.name} in {timeout} s")
            with suppress(requests.RequestException):
                requests.get(f"{self.base}/healthz", timeout=2)
            time.sleep(0.05)
        return time.monotonic() - started


@contextmanager
def running_topology(
    work: Path,
    settings: Mapping[str, str] | None = None,
    *,
    postgres: PostgresServer | None = None,
    ports: Ports = Ports(),
) -> Iterator[Topology]:
    """Start PostgreSQL (unless ``postgres`` is given), two replicas and nginx; yield once all
    answer; stop everything (replicas gracefully) on exit. ``settings`` are environment variables
    for both replicas (``CDS_TRUSTED_ISSUERS_FILE``, ...)."""
    nginx_binary()  # fail before starting anything
    with ExitStack() as stack:
        if postgres is None:
            postgres = stack.enter_context(throwaway_cluster(port=ports.postgres or None))
        database_url = postgres.create_database()
        stack.callback(postgres.drop_database, database_url)
        engine = open_engine(database_url)
        try:
            upgrade(engine)  # once per release, before the replicas start (hfs-cds db upgrade)
        finally:
            engine.dispose()
        front = ports.front or free_port()
        base = f"http://127.0.0.1:{front}"
        replicas = []
        for index, port in enumerate(ports.replicas, start=1):
            port = port or free_port()
            folder = work / f"replica-{index}"
            env = image_environment(
                folder / "volume",
                **{
                    "CDS_PUBLIC_BASE_URL": base,  # unless the caller names another
                    **dict(settings or {}),
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                    "CDS_DATABASE_URL": database_url,
                },
            )
            replicas.append(Replica(f"replica-{index}", port, env, folder))
        for replica in replicas:
            stack.callback(replica.stop)
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        balancer = LoadBalancer(work / "nginx", front, [r.address for r in replicas])
        stack.callback(balancer.stop)
        balancer.start()
        yield Topology(
            base,
            database_url,
            replicas,
            balancer,
            work,
            [r.log for r in replicas] + [balancer.access_log, balancer.work / "error.log"],
        )


# -- calls through the front door ------------------------------------------------------------------


@dataclass
class Call:
    """One request: when it started and ended (``time.monotonic``), its status (0: no answer)."""

    started: float
    ended: float
    status: int
    card: dict[str, Any] | None = None
    answer: Any = None  # the decoded JSON body of a feedback answer (None: none, or not JSON)


@dataclass
class Caller:
    """Signs and sends hook calls and feedback as one EHR, each over a new connection."""

    base: str
    signer: SigningKey
    service: str = SERVICE_IDS["patient-view"]
    timeout: float = 10.0
    #: Each hook call about a patient of its own, so no card is ever silenced by feedback on an
    #: earlier one (patient-view stays quiet after a clinician acted on the same inputs).
    fresh_patients: bool = False

    def _post(self, path: str, body: bytes) -> tuple[int, Any]:
        url = f"{self.base}{path}"
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.signer.sign(url)}",
            "Connection": "close",
        }
        try:
            response = requests.post(url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException:
            return 0, None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    def hook_call(self) -> Call:
        """A patient-view call whose prefetch scores (one card)."""
        patient = f"p-{uuid.uuid4().hex[:12]}" if self.fresh_patients else "p1"
        body = json.dumps(
            hook_body("patient-view", recent_patient(patient=patient), patient=patient)
        ).encode()
        started = time.monotonic()
        status, answer = self._post(f"/cds-services/{self.service}", body)
        cards = answer.get("cards") if isinstance(answer, dict) else None
        card = cards[0] if status == 200 and cards else None
        return Call(started, time.monotonic(), status, card)

    def feedback(self, card: dict[str, Any]) -> Call:
        """The clinician accepted ``card``'s first suggestion."""
        entry = {
            "card": card["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        started = time.monotonic()
        status, answer = self._post(
            f"/cds-services/{self.service}/feedback", json.dumps({"feedback": [entry]}).encode()
        )
        return Call(started, time.monotonic(), status, card, answer)


@dataclass
class SteadyLoad:
    """``threads`` EHR clients in a loop: a hook call, then feedback on the card of their
    previous call (by then its audit record is written), then a pause of ``pause`` seconds."""

    caller: Caller
    threads: int = 3
    pause: float = 0.03
    hook_calls: list[Call] = field(default_factory=list)
    feedback: list[Call] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        previous: dict[str, Any] | None = None
        while not self._stop.is_set():
            call = self.caller.hook_call()
            self.hook_calls.append(call)
            if previous is not None:
                self.feedback.append(self.caller.feedback(previous))
            previous = call.card
            self._stop.wait(self.pause)

    @contextmanager
    def running(self) -> Iterator[SteadyLoad]:
        pool = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for thread in pool:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in pool:
                thread.join(timeout=30)

    def failed(self) -> list[Call]:
        return [c for c in self.hook_calls if c.status != 200]
