"""The SMART session store in the store's database, shared by workers and replicas: what the
in-memory store cannot do, on SQLite and on PostgreSQL.

The behaviour both stores share is tested on both in ``test_smart_units.py``. Here: processes
(forked, as gunicorn forks its workers from the master that created the app and its key), a key
that cannot read the sessions (a restart), what reaches the database, the refresh lease, idle
sessions purged on the schedule, and two app instances (replicas) on one PostgreSQL database.
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select, update

import tests.postgres
from cds_service import create_app
from cds_service.security.trusted_issuers import mint_development_token
from cds_service.smart import EXTENSION, init_smart, shared_sessions
from cds_service.smart.sealing import Sealer
from cds_service.smart.sessions import LaunchContext, PendingAuthorization, RefreshedTokens
from cds_service.smart.shared_sessions import SharedSessionStore
from cds_service.store.schema import smart_launch, smart_pending, smart_session
from cds_service.store.state import StateDatabase
from tests.conftest import migrated_state
from tests.smart.served import FakeClock
from tests.test_smart_sessions_hardening import BASE, CONFIG, EHR, Browser, token

# Fixtures from tests/postgres.py (redundant once conftest.py lists it in pytest_plugins).
postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url

IDLE = timedelta(hours=1)
CHILD_TIMEOUT_SECONDS = 60
fork = multiprocessing.get_context("fork")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(any_state: StateDatabase, clock: FakeClock) -> SharedSessionStore:
    """The shared store with its own key, as one app instance has (each backend in turn)."""
    return SharedSessionStore(any_state, Sealer(), clock, IDLE)


def pending(state: str, clock: FakeClock) -> PendingAuthorization:
    return PendingAuthorization(
        state,
        "verifier-" + "v" * 40,
        "https://e/fhir",
        "https://e/t",
        "https://a/cb",
        False,
        clock(),
    )


def launch(ref: str, clock: FakeClock, **fields: Any) -> LaunchContext:
    values: dict[str, Any] = {
        "fhir_base": "https://e/fhir",
        "token_endpoint": "https://e/token",
        "access_token": "access-secret-1",
        "token_type": "Bearer",
        "expires_at": None,
        "refresh_token": "refresh-secret-1",
        "scope": ("launch",),
        "patient_id": "patient-secret-1",
        "encounter_id": None,
        "need_patient_banner": True,
        "app_context": None,
        "fhir_context": (),
        "standalone": False,
        "created": clock(),
        **fields,
    }
    return LaunchContext(ref=ref, **values)


def in_children(count: int, target: Any, *args: Any) -> list[Any]:
    """Run ``target(*args, barrier, results)`` in ``count`` forked children; what they reported."""
    results = fork.Queue()
    barrier = fork.Barrier(count)
    children = [fork.Process(target=target, args=(*args, barrier, results)) for _ in range(count)]
    for child in children:
        child.start()
    out = [results.get(timeout=CHILD_TIMEOUT_SECONDS) for _ in children]
    for child in children:
        child.join(timeout=CHILD_TIMEOUT_SECONDS)
        assert child.exitcode == 0
    return out


# -- processes ---------------------------------------------------------------------------------------


def _read_in_child(
    store: SharedSessionStore, cookie: str, ref: str, barrier: Any, results: Any
) -> None:
    context = store.launch(cookie, ref)
    results.put((store.exists(cookie), context.access_token if context else None))


def test_a_forked_process_sees_the_sessions_and_launches_of_another(
    store: SharedSessionStore, clock: FakeClock
) -> None:
    cookie, _ = store.open(None)
    store.add_launch(cookie, launch("r1", clock))
    assert in_children(1, _read_in_child, store, cookie, "r1") == [(True, "access-secret-1")]


def _open_in_child(
    store: SharedSessionStore, created: datetime, barrier: Any, results: Any
) -> None:
    cookie, _ = store.open(None)
    store.add_pending(cookie, PendingAuthorization("s", "v" * 43, "b", "t", "r", False, created))
    results.put(cookie)


def test_a_session_started_in_a_child_is_usable_in_the_parent(
    store: SharedSessionStore, clock: FakeClock
) -> None:
    (cookie,) = in_children(1, _open_in_child, store, clock())
    assert store.exists(cookie)
    assert isinstance(store.take_pending(cookie, "s"), PendingAuthorization)


def _take_in_child(
    store: SharedSessionStore, cookie: str, state: str, barrier: Any, results: Any
) -> None:
    barrier.wait(timeout=CHILD_TIMEOUT_SECONDS)
    taken = store.take_pending(cookie, state)
    results.put(taken if isinstance(taken, str) else "taken")


def test_a_state_is_taken_once_across_processes(
    store: SharedSessionStore, clock: FakeClock
) -> None:
    cookie, _ = store.open(None)
    store.add_pending(cookie, pending("raced", clock))
    outcomes = in_children(4, _take_in_child, store, cookie, "raced")
    assert sorted(outcomes) == ["taken", "used", "used", "used"]


# -- another key: exactly like an expired session ----------------------------------------------------


def _observe(store: SharedSessionStore, cookie: str) -> tuple[object, ...]:
    """What each entry point says about ``cookie`` (without creating anything)."""
    return (
        store.exists(cookie),
        store.launch(cookie, "r1"),
        store.take_pending(cookie, "s1"),
        store.refresh_launch(cookie, "r1", "access-secret-1", _never),
    )


def _never(token: str) -> RefreshedTokens:
    raise AssertionError("no refresh may happen")


def test_sessions_sealed_with_another_key_behave_as_expired(
    any_state: StateDatabase, clock: FakeClock
) -> None:
    before = SharedSessionStore(any_state, Sealer(), clock, IDLE)  # the app before a restart
    cookie, _ = before.open(None)
    before.add_pending(cookie, pending("s1", clock))
    before.add_launch(cookie, launch("r1", clock))
    expired_cookie, _ = before.open(None)
    before.add_pending(expired_cookie, pending("s1", clock))
    before.add_launch(expired_cookie, launch("r1", clock))

    after = SharedSessionStore(any_state, Sealer(), clock, IDLE)  # a new key
    unreadable = _observe(after, cookie)
    clock.advance(IDLE + timedelta(minutes=1))
    expired = _observe(before, expired_cookie)

    assert unreadable == expired == (False, None, "no-session", None)
    fresh, created = after.open(cookie)
    assert created and fresh != cookie  # never adopted


def test_a_process_with_the_same_key_reads_the_sessions(
    any_state: StateDatabase, clock: FakeClock
) -> None:
    key = os.urandom(32)
    one = SharedSessionStore(any_state, Sealer(key), clock, IDLE)
    cookie, _ = one.open(None)
    one.add_launch(cookie, launch("r1", clock))
    other = SharedSessionStore(any_state, Sealer(key), clock, IDLE)
    context = other.launch(cookie, "r1")
    assert context is not None and context.patient_id == "patient-secret-1"


def test_an_altered_or_moved_sealed_value_does_not_open(
    store: SharedSessionStore, any_state: StateDatabase, clock: FakeClock
) -> None:
    cookie, _ = store.open(None)
    store.add_launch(cookie, launch("r1", clock))
    store.add_launch(cookie, launch("r2", clock, access_token="other"))
    store.add_pending(cookie, pending("s1", clock))
    with any_state.write() as conn:
        r1 = select(smart_launch.c.sealed).where(smart_launch.c.ref == "r1").scalar_subquery()
        moved = conn.execute(select(r1)).scalar_one()
        # r1's valid sealed value moved to r2; r1's altered; every pending one replaced.
        conn.execute(update(smart_launch).where(smart_launch.c.ref == "r2").values(sealed=moved))
        conn.execute(
            update(smart_launch).where(smart_launch.c.ref == "r1").values(sealed=moved + b"\0")
        )
        conn.execute(update(smart_pending).values(sealed=b"\0"))
    assert store.launch(cookie, "r1") is None
    assert store.launch(cookie, "r2") is None
    assert store.take_pending(cookie, "s1") == "expired"
    assert store.exists(cookie)


# -- on disk -----------------------------------------------------------------------------------------


def test_no_token_verifier_cookie_state_or_patient_reaches_the_database(
    store: SharedSessionStore, any_state: StateDatabase, clock: FakeClock, tmp_path: Path
) -> None:
    cookie, _ = store.open(None)
    store.add_pending(cookie, pending("state-secret-1", clock))
    store.add_launch(cookie, launch("r1", clock))
    stored = b""
    with any_state.connect() as conn:
        for table in (smart_session, smart_pending, smart_launch):
            for row in conn.execute(select(table)):
                stored += b"|".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
    if any_state.backend == "sqlite":
        any_state.close()  # everything written
        stored += b"".join(p.read_bytes() for p in tmp_path.glob("*.sqlite3*"))
    assert stored
    for secret in (
        cookie,
        "state-secret-1",
        "verifier-",
        "access-secret-1",
        "refresh-secret-1",
        "patient-secret-1",
    ):
        assert secret.encode() not in stored, secret


# -- the refresh lease -------------------------------------------------------------------------------


def _refresh_in_child(
    store: SharedSessionStore, cookie: str, log: str, barrier: Any, results: Any
) -> None:
    def refresh(token: str) -> RefreshedTokens:
        with open(log, "a") as out:  # every use of a refresh token, from any process
            out.write(f"{token}\n")
        time.sleep(0.2)  # a slow token endpoint: the others find the lease taken and wait
        return RefreshedTokens(f"access-from-{os.getpid()}", None, "refresh-secret-2", None)

    barrier.wait(timeout=CHILD_TIMEOUT_SECONDS)
    context = store.refresh_launch(cookie, "r1", "access-secret-1", refresh)
    results.put(context.access_token if context else None)


def test_processes_refreshing_at_once_use_the_refresh_token_once(
    store: SharedSessionStore, clock: FakeClock, tmp_path: Path
) -> None:
    cookie, _ = store.open(None)
    store.add_launch(cookie, launch("r1", clock))
    log = tmp_path / "refreshes.log"
    tokens = in_children(4, _refresh_in_child, store, cookie, str(log))
    assert log.read_text().splitlines() == ["refresh-secret-1"]
    assert len(set(tokens)) == 1 and tokens[0].startswith("access-from-")
    stored = store.launch(cookie, "r1")
    assert stored is not None and stored.access_token == tokens[0]
    assert stored.refresh_token == "refresh-secret-2"


class StepClock:
    """A lease clock that moves one second each time it is read (no real waiting)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _hold_lease(any_state: StateDatabase, until: float) -> None:
    with any_state.write() as conn:
        conn.execute(update(smart_launch).values(lease_owner=b"\x01", lease_until=until))


def test_a_lease_left_by_a_dead_holder_lapses(
    any_state: StateDatabase, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_sessions, "LEASE_POLL_SECONDS", 0.0)
    lease_clock = StepClock()
    store = SharedSessionStore(
        any_state, Sealer(), clock, IDLE, lease_seconds=10, lease_clock=lease_clock
    )
    cookie, _ = store.open(None)
    store.add_launch(cookie, launch("r1", clock))
    _hold_lease(any_state, lease_clock.now + 5)  # a worker died mid-refresh

    context = store.refresh_launch(
        cookie, "r1", "access-secret-1", lambda t: RefreshedTokens("access-2", None, None, None)
    )
    assert context is not None and context.access_token == "access-2"
    with any_state.connect() as conn:
        row = conn.execute(select(smart_launch.c.lease_owner, smart_launch.c.lease_until)).one()
    assert tuple(row) == (None, 0)  # released


def test_a_waiter_gives_up_after_a_whole_lease(
    any_state: StateDatabase, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_sessions, "LEASE_POLL_SECONDS", 0.0)
    lease_clock = StepClock()
    store = SharedSessionStore(
        any_state, Sealer(), clock, IDLE, lease_seconds=10, lease_clock=lease_clock
    )
    cookie, _ = store.open(None)
    store.add_launch(cookie, launch("r1", clock))
    _hold_lease(any_state, lease_clock.now + 1_000)  # someone keeps renewing it

    assert store.refresh_launch(cookie, "r1", "access-secret-1", _never) is None
    stored = store.launch(cookie, "r1")
    assert stored is not None and stored.refresh_token == "refresh-secret-1"  # untouched


# -- idle sessions are purged on the schedule --------------------------------------------------------


def test_idle_sessions_and_their_rows_are_purged(
    any_state: StateDatabase, clock: FakeClock
) -> None:
    store = SharedSessionStore(any_state, Sealer(), clock, IDLE)
    idle, _ = store.open(None)
    store.add_pending(idle, pending("s1", clock))
    store.add_launch(idle, launch("r1", clock))
    clock.advance(IDLE / 2)
    alive, _ = store.open(None)
    clock.advance(IDLE / 2 + timedelta(seconds=1))
    assert store.purge() == 1  # what the schedule runs
    assert not store.exists(idle) and store.exists(alive)
    with any_state.connect() as conn:
        for table in (smart_pending, smart_launch):  # gone with their session (cascade)
            assert conn.execute(select(func.count()).select_from(table)).scalar() == 0


# -- two replicas on one PostgreSQL database ---------------------------------------------------------


def test_two_replicas_on_one_postgresql_share_replay_and_sessions(
    postgres_server: tests.postgres.PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14: two app instances (as two replicas behind a load balancer, no stickiness) on one
    PostgreSQL database with one SMART_SESSION_KEY: a token accepted by one is refused by the
    other, and a SMART launch begun on one finishes on the other and is served by both."""
    url = postgres_server.create_database()
    migrated_state(url).close()
    key = base64.b64encode(os.urandom(32)).decode()
    config = {
        "TESTING": True,
        "DEV_MODE": True,
        "PUBLIC_BASE_URL": BASE,
        "DATABASE_URL": url,
        "SMART_CLIENT_ID": "hfs-smart-test",
        "SMART_ALLOWED_ISSUERS": EHR,
        "SMART_SESSION_KEY": key,
    }
    replicas = [create_app(config), create_app(config)]
    try:
        for app in replicas:
            init_smart(app, app.extensions["hfs_cds"].settings)
            oauth = app.extensions[EXTENSION].oauth
            monkeypatch.setattr(oauth, "discover", lambda fhir_base: CONFIG)
            monkeypatch.setattr(oauth, "exchange_code", lambda *args: token())
        a, b = (app.test_client(use_cookies=False) for app in replicas)

        header = {"Authorization": f"Bearer {mint_development_token(f'{BASE}/cds-services')}"}
        assert a.get("/cds-services", headers=header, base_url=BASE).status_code == 200
        assert b.get("/cds-services", headers=header, base_url=BASE).status_code == 401

        browser = Browser(a)
        state = browser.start()  # the launch and the redirect to the EHR: replica A
        browser.client = b  # the EHR redirects back; the load balancer picks replica B
        called_back = browser.get("/smart/callback", state=state, code="code-1")
        assert called_back.status_code == 303, called_back.get_data(as_text=True)[:300]
        ref = urlsplit(called_back.headers["Location"]).path.split("/")[3]
        for client in (a, b, a):
            browser.client = client
            answer = browser.get(f"/smart/app/{ref}/what-if.json", minutes="42", hb="II")
            assert answer.status_code == 200
        browser.client = a  # the state was used on B: refused on A too
        assert browser.get("/smart/callback", state=state, code="code-1").status_code != 303
    finally:
        for app in replicas:
            app.extensions[EXTENSION].close()
            app.extensions["hfs_cds"].close()
        postgres_server.drop_database(url)
