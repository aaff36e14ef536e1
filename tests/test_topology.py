"""The production topology, for real (issue 14, item 4): PostgreSQL, two replicas running the image's
gunicorn command, and nginx in front with the compose file's configuration (tests/topology.py).

One topology serves the module; the tests that break it (a replica SIGKILLed, a rolling restart)
come last and restart what they stopped. Each test prints its figures (calls sent, failed, records
expected and found, time to route around a dead replica): ``pytest -s`` shows them.

The replicas run in development mode only so that the SMART app may reach the EHR shim over http
on loopback; hook calls and feedback are authenticated with a mounted trust list, as in production.
"""

from __future__ import annotations

import base64
import secrets
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import Table, create_engine, select

from cds_service.security.trusted_issuers import SigningKey
from cds_service.store.schema import audit_record, feedback
from tests.postgres import PostgresServer
from tests.smart.pages import Page
from tests.smart.served import Seed
from tests.smart.shim import EhrShim
from tests.test_docker_gunicorn import mounted_trust_list
from tests.topology import Caller, SteadyLoad, Topology, running_topology

pytest_plugins = ("tests.smart.fixtures",)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc"),
]

#: The service's body cap (CDS_MAX_REQUEST_BYTES' default), which nginx's client_max_body_size matches.
BODY_CAP = 5 * 1024 * 1024


@dataclass
class Served:
    topology: Topology
    signer: SigningKey
    smart_client_id: str

    @property
    def base(self) -> str:
        return self.topology.base

    def caller(self) -> Caller:
        return Caller(self.base, self.signer)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, ehr_shim: EhrShim
) -> Iterator[Served]:
    """The topology for this module, on a new database of the session's PostgreSQL server."""
    work = tmp_path_factory.mktemp("topology")
    signer = mounted_trust_list(work)
    client_id = f"hfs-smart-{uuid.uuid4().hex[:8]}"
    settings = {
        "CDS_TRUSTED_ISSUERS_FILE": str(work / "trusted-issuers.json"),
        "CDS_DEV_MODE": "1",  # only for http to the loopback EHR shim (SMART)
        "SMART_CLIENT_ID": client_id,
        "SMART_ALLOWED_ISSUERS": ehr_shim.fhir_base,
        "SMART_COOKIE_SECURE": "false",  # plain http on loopback
        "SMART_SESSION_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),  # both replicas
    }
    with running_topology(work, settings, postgres=postgres_server) as topology:
        ehr_shim.register_client(client_id, [f"{topology.base}/smart/callback"])
        yield Served(topology, signer, client_id)


def figures(test: str, **values: object) -> None:
    """The test's measurements, on one line of the test's output."""
    print(f"\n[topology] {test}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def stored_cards(database_url: str, table: Table) -> set[str]:
    """Card uuids of the rows of ``table`` (feedback, audit_record) in the topology's database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(table.c.card_uuid)).scalars())
    finally:
        engine.dispose()


def refused_but_audited(load: SteadyLoad, database_url: str) -> int:
    """Feedback refused with 422 (card unknown) whose card is in the audit trail afterwards: the
    card's record was still queued in the replica that answered the hook call when the other
    replica got the feedback (the audit writer is asynchronous, per replica)."""
    audited = stored_cards(database_url, audit_record)
    return sum(1 for c in load.feedback if c.status == 422 and c.card and c.card["uuid"] in audited)


# -- the original host and scheme ---------------------------------------------------------------------


def test_a_token_for_the_public_url_is_accepted_by_both_replicas(served: Served) -> None:
    """Each replica checks ``aud`` against the front door's URL (CDS_PUBLIC_BASE_URL), not its own
    address: a token for the public URL works whichever replica nginx picks, a token for a
    replica's own address does not."""
    topology = served.topology
    since = topology.balancer.access_log.stat().st_size
    public = f"{served.base}/cds-services"
    statuses = []
    for _ in range(6):
        bearer = {"Authorization": f"Bearer {served.signer.sign(public)}"}
        statuses.append(requests.get(public, headers=bearer, timeout=10).status_code)
    answered_by = {a for a, status in topology.routed(since, count=6) if status == "200"}

    direct = f"{topology.replicas[0].base}/cds-services"
    wrong = {"Authorization": f"Bearer {served.signer.sign(direct)}"}
    refused = requests.get(public, headers=wrong, timeout=10)

    figures("public audience", calls=len(statuses), accepted=statuses.count(200))
    assert statuses == [200] * 6
    assert answered_by == {r.address for r in topology.replicas}
    assert refused.status_code == 401, refused.text


def test_a_smart_launch_redirects_to_the_public_callback(served: Served, shim: EhrShim) -> None:
    """The redirect URI sent to the EHR's authorization server is on the front door's URL (where
    the browser must come back), whichever replica began the launch; the EHR accepts it."""
    for _ in range(2):  # round robin: one launch begun on each replica
        query = {"iss": shim.fhir_base, "launch": shim.new_launch("topology-smart")}
        started = requests.get(
            f"{served.base}/smart/launch", params=query, allow_redirects=False, timeout=10
        )
        assert started.status_code == 302, started.text
        location = started.headers["Location"]
        (redirect_uri,) = parse_qs(urlsplit(location).query)["redirect_uri"]
        assert redirect_uri == f"{served.base}/smart/callback"
        authorized = requests.get(location, allow_redirects=False, timeout=10)
        assert authorized.status_code == 302, authorized.text  # the EHR knows that URI
        assert authorized.headers["Location"].startswith(f"{served.base}/smart/callback?")


# -- the body cap ---------------------------------------------------------------------------------------


def test_the_front_door_answers_413_above_the_service_cap(served: Served) -> None:
    topology = served.topology
    caller = served.caller()
    url = f"{served.base}/cds-services/{caller.service}"

    def post(body: bytes | Iterator[bytes]) -> requests.Response:
        headers = {
            "Authorization": f"Bearer {served.signer.sign(url)}",
            "Content-Type": "application/json",
        }
        return requests.post(url, data=body, headers=headers, timeout=30)

    def chunks(size: int) -> Iterator[bytes]:  # a generator is sent chunked, without a length
        for start in range(0, size, 64 * 1024):
            yield b" " * min(64 * 1024, size - start)

    since = topology.balancer.access_log.stat().st_size
    too_long = post(b" " * (BODY_CAP + 1))
    too_long_chunked = post(chunks(BODY_CAP + 1))
    assert topology.routed(since, count=2) == []  # neither reached a replica
    for answer in (too_long, too_long_chunked):
        assert answer.status_code == 413
        assert answer.json()["issue"][0]["code"] == "too-costly"

    since = topology.balancer.access_log.stat().st_size
    at_cap = post(b" " * BODY_CAP)  # allowed through: the replica decides (not JSON: 400)
    assert at_cap.status_code == 400, at_cap.text[:300]
    assert len(topology.routed(since, count=1)) == 1


# -- slow clients ---------------------------------------------------------------------------------------


SLOW_CLIENTS = 12
SLOW_SECONDS = 4.0


def test_clients_dribbling_headers_do_not_stop_other_hook_calls(served: Served) -> None:
    """Twelve connections send their request headers a byte at a time for four seconds (what took
    every gunicorn worker offline for 30 s when gunicorn faced clients itself); meanwhile other
    EHR calls through the same front door are answered as usual, and no replica ever sees the
    slow requests (nginx passes on only whole requests)."""
    host = served.base.removeprefix("http://")
    address = ("127.0.0.1", int(host.rsplit(":", 1)[1]))
    stop = threading.Event()
    dribbled = [0] * SLOW_CLIENTS

    def dribble(index: int) -> None:
        head = f"GET /slow-client-{index} HTTP/1.1\r\nHost: {host}\r\nX-Padding: "
        with socket.create_connection(address, timeout=5) as conn:
            for byte in head.encode() + b"a" * 1000:
                if stop.wait(0.1):
                    return
                conn.sendall(bytes([byte]))
                dribbled[index] += 1

    slow = [threading.Thread(target=dribble, args=(i,), daemon=True) for i in range(SLOW_CLIENTS)]
    for thread in slow:
        thread.start()
    caller = served.caller()
    calls = []
    deadline = time.monotonic() + SLOW_SECONDS
    time.sleep(0.5)  # every slow client is connected and dribbling
    while time.monotonic() < deadline:  # an EHR's steady trickle, about 20 calls a second
        calls.append(caller.hook_call())
        time.sleep(0.05)
    stop.set()
    for thread in slow:
        thread.join(timeout=5)

    slowest = max(c.ended - c.started for c in calls)
    figures(
        "slow headers",
        slow_connections=SLOW_CLIENTS,
        seconds=SLOW_SECONDS,
        bytes_dribbled=sum(dribbled),
        calls_sent=len(calls),
        failed=sum(c.status != 200 for c in calls),
        slowest_call_s=f"{slowest:.3f}",
    )
    assert min(dribbled) > 10  # each slow client really was sending all along
    assert calls and all(c.status == 200 and c.card for c in calls)
    assert slowest < 2.0
    for replica in served.topology.replicas:
        assert "slow-client" not in replica.log.read_text(errors="replace")


# -- nothing sticky: state shared through PostgreSQL --------------------------------------------------


COPIES = 16


def test_a_token_used_on_one_replica_is_refused_by_the_other(served: Served) -> None:
    topology = served.topology
    first, second = topology.replicas
    url = f"{served.base}/cds-services"  # the audience: the public URL, whichever replica
    bearer = {"Authorization": f"Bearer {served.signer.sign(url)}"}
    used = requests.get(f"{first.base}/cds-services", headers=bearer, timeout=10)
    replayed = requests.get(f"{second.base}/cds-services", headers=bearer, timeout=10)
    assert used.status_code == 200, used.text
    assert replayed.status_code == 401
    assert "replayed jti" in second.log.read_text(errors="replace")


def test_copies_of_one_token_through_the_front_door_give_one_answer(served: Served) -> None:
    """16 copies of one token, in parallel over fresh connections through nginx (so both
    replicas get some): exactly one is answered."""
    topology = served.topology
    url = f"{served.base}/cds-services"
    bearer = {"Authorization": f"Bearer {served.signer.sign(url)}", "Connection": "close"}
    since = topology.balancer.access_log.stat().st_size

    def send(_: int) -> int:
        return requests.get(url, headers=bearer, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=COPIES) as pool:
        statuses = sorted(pool.map(send, range(COPIES)))
    reached = {address for address, _ in topology.routed(since, count=COPIES)}
    figures(
        "one token, 16 copies",
        copies=COPIES,
        answered=statuses.count(200),
        refused=statuses.count(401),
        replicas_reached=len(reached),
    )
    assert statuses == [200] + [401] * (COPIES - 1)
    assert reached == {r.address for r in topology.replicas}


def test_a_smart_launch_begun_on_one_replica_finishes_on_the_other(
    served: Served, shim: EhrShim, seed: Seed
) -> None:
    """Each step of the flow on the other replica than the step before (no stickiness): the
    launch on the first, the callback on the second, the risk page on the first again."""
    first, second = served.topology.replicas
    patient = f"topology-smart-{uuid.uuid4().hex[:8]}"
    seed(patient)
    browser = requests.Session()  # keeps the app's cookie (host-wide, whatever the port)
    query = {"iss": shim.fhir_base, "launch": shim.new_launch(patient)}
    started = browser.get(
        f"{first.base}/smart/launch", params=query, allow_redirects=False, timeout=10
    )
    assert started.status_code == 302, started.text
    authorized = requests.get(started.headers["Location"], allow_redirects=False, timeout=10)
    assert authorized.status_code == 302, authorized.text
    callback = urlsplit(authorized.headers["Location"])  # on the public URL: sent to replica 2
    called_back = browser.get(
        f"{second.base}{callback.path}?{callback.query}", allow_redirects=False, timeout=10
    )
    assert called_back.status_code == 303, called_back.text
    page = urlsplit(called_back.headers["Location"])
    shown = browser.get(f"{first.base}{page.path}?{page.query}", timeout=10)
    assert shown.status_code == 200
    assert Page(shown.text).status == "scored", shown.text[:500]


# -- faults: these come last, and restart what they stop ---------------------------------------------


def test_a_killed_replica_is_routed_around_within_a_second(served: Served) -> None:
    """SIGKILL to one replica (master and workers) under steady load: nginx stops sending it calls
    at its first failure, calls caught inside it either fail or are resent to the other replica,
    every call begun a second after the kill is answered, and every feedback answered 200 is in
    PostgreSQL."""
    topology = served.topology
    victim = topology.replicas[0]
    load = SteadyLoad(served.caller())
    since = topology.balancer.access_log.stat().st_size
    try:
        with load.running():
            time.sleep(1.5)
            killed_at, killed_at_wall = time.monotonic(), time.time()
            victim.kill()
            time.sleep(2.5)
    finally:
        victim.start()
        victim.wait_ready()
        topology.wait_routed(victim)

    after = [c for c in load.hook_calls if c.started > killed_at]
    failed = load.failed()
    clients_failing_s = max((c.ended for c in failed), default=killed_at) - killed_at
    to_victim = [
        (ended, status)
        for ended, address, status in topology.attempts(since)
        if address == victim.address and ended >= killed_at_wall
    ]
    refused = [ended for ended, status in to_victim if status != "200"]
    noticed_s = min(refused) - killed_at_wall if refused else None
    acknowledged = {c.card["uuid"] for c in load.feedback if c.status == 200 and c.card}
    stored = stored_cards(topology.database_url, feedback)
    figures(
        "replica SIGKILLed",
        calls_sent=len(load.hook_calls),
        calls_after_kill=len(after),
        failed=len(failed),
        failed_statuses=sorted({c.status for c in failed}),
        clients_failing_for_s=f"{clients_failing_s:.3f}",
        nginx_noticed_after_s=None if noticed_s is None else f"{noticed_s:.3f}",
        attempts_on_dead_replica=len(refused),
        feedback_sent=len(load.feedback),
        feedback_statuses=sorted(Counter(c.status for c in load.feedback).items()),
        feedback_200=len(acknowledged),
        feedback_found=len(acknowledged & stored),
        feedback_422_card_audited_later=refused_but_audited(load, topology.database_url),
    )
    assert len(after) > 10  # the load went on after the kill
    assert noticed_s is not None and noticed_s < 1.0
    assert clients_failing_s < 1.0
    assert all(c.status == 200 for c in after if c.started > killed_at + 1.0)
    assert acknowledged and acknowledged <= stored


def test_a_rolling_restart_fails_no_hook_call(served: Served) -> None:
    """SIGTERM to one replica, start it again, wait until it is ready and nginx sends it
    requests again, then the other: under steady load, not one hook call fails."""
    topology = served.topology
    load = SteadyLoad(served.caller())
    back_in_s = []
    before = [r.process.pid if r.process else 0 for r in topology.replicas]
    with load.running():
        time.sleep(1.0)
        for replica in topology.replicas:
            stopped_at = time.monotonic()
            replica.terminate()
            assert replica.wait_stopped() == 0  # a graceful stop
            replica.start()
            replica.wait_ready()
            topology.wait_routed(replica)
            back_in_s.append(f"{time.monotonic() - stopped_at:.2f}")
        time.sleep(1.0)

    failed = load.failed()
    acknowledged = {c.card["uuid"] for c in load.feedback if c.status == 200 and c.card}
    stored = stored_cards(topology.database_url, feedback)
    figures(
        "rolling restart",
        calls_sent=len(load.hook_calls),
        failed=len(failed),
        failed_statuses=sorted({c.status for c in failed}),
        replica_back_in_s=back_in_s,
        feedback_sent=len(load.feedback),
        feedback_statuses=sorted(Counter(c.status for c in load.feedback).items()),
        feedback_200=len(acknowledged),
        feedback_found=len(acknowledged & stored),
        feedback_422_card_audited_later=refused_but_audited(load, topology.database_url),
    )
    assert [r.process.pid if r.process else 0 for r in topology.replicas] != before
    assert len(load.hook_calls) > 50
    assert failed == []
    assert acknowledged and acknowledged <= stored
