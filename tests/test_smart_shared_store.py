"""The SMART session store the worker processes share: what the in-memory store cannot do.

The behaviour both stores share is tested on both in ``test_smart_units.py``. Here: processes
(forked, as gunicorn forks its workers from the master that created the app and its key), a key
that cannot read the sessions (a restart), what reaches the disk, and the refresh lease.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_service.shared_state import SharedState
from cds_service.smart import shared_sessions
from cds_service.smart.sealing import Sealer
from cds_service.smart.sessions import LaunchContext, PendingAuthorization, RefreshedTokens
from cds_service.smart.shared_sessions import SharedSessionStore
from tests.smart.served import FakeClock

IDLE = timedelta(hours=1)
CHILD_TIMEOUT_SECONDS = 60
fork = multiprocessing.get_context("fork")



@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(shared: SharedState, clock: FakeClock) -> SharedSessionStore:
    """The shared store with its own key, as one app instance has."""
    return SharedSessionStore(shared, Sealer(), clock, IDLE)


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
    shared: SharedState, clock: FakeClock
) -> None:
    before = SharedSessionStore(shared, Sealer(), clock, IDLE)  # the app before a restart
    cookie, _ = before.open(None)
    before.add_pending(cookie, pending("s1", clock))
    before.add_launch(cookie, launch("r1", clock))
    expired_cookie, _ = before.open(None)
    before.add_pending(expired_cookie, pending("s1", clock))
    before.add_launch(expired_cookie, launch("r1", clock))

    after = SharedSessionStore(shared, Sealer(), clock, IDLE)  # a new key
    unreadable = _observe(after, cookie)
    clock.advance(IDLE + timedelta(minutes=1))
    expired = _observe(before, expired_cookie)

    assert unreadable == expired == (False, None, "no-session", None)
    fresh, created = after.open(cookie)
    assert created and fresh != cookie  # never adopted


def test_a_process_with_the_same_key_reads_the_sessions(
    shared: SharedState, clock: FakeClock
) -> None:
    key = os.urandom(32)
    one = SharedSessionStore(shared, Sealer(key), clock, IDLE)
    cookie, _ = one.open(None)
    one.add_launch(cookie, launch("r1", clock))
    other = SharedSessionStore(shared, Sealer(key), clock, IDLE)
    context = other.launch(cookie, "r1")
    assert context is not None and context.patient_id == "patient-secret-1"


def test_an_altered_or_moved_sealed_value_does_not_open(
    store: SharedSessionStore, shared: SharedState, clock: FakeClock
) -> None:
    cookie, _ = store.open(None)
    store.add_launch(cookie, launch("r1", clock))
    store.add_launch(cookie, launch("r2", clock, access_token="other"))
    store.add_pending(cookie, pending("s1", clock))
    conn = shared.connection()
    conn.execute(  # r1's valid sealed value moved to r2
        "UPDATE smart_launches SET sealed = (SELECT sealed FROM smart_launches WHERE ref = 'r1') "
        "WHERE ref = 'r2'"
    )
    conn.execute(
        "UPDATE smart_launches SET sealed = CAST(sealed || x'00' AS BLOB) WHERE ref = 'r1'"
    )
    conn.execute("UPDATE smart_pending SET sealed = x'00'")
    assert store.launch(cookie, "r1") is None
    assert store.launch(cookie, "r2") is None
    assert store.take_pending(cookie, "s1") == "expired"
    assert store.exists(cookie)


# -- on disk -----------------------------------------------------------------------------------------


def test_no_token_verifier_cookie_state_or_patient_reaches_the_disk(
    store: SharedSessionStore, shared: SharedState, clock: FakeClock, tmp_path: Path
) -> None:
    cookie, _ = store.open(None)
    store.add_pending(cookie, pending("state-secret-1", clock))
    store.add_launch(cookie, launch("r1", clock))
    shared.close()  # everything written
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("shared.sqlite3*"))
    for secret in (
        cookie,
        "state-secret-1",
        "verifier-",
        "access-secret-1",
        "refresh-secret-1",
        "patient-secret-1",
    ):
        assert secret.encode() not in on_disk, secret


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


def _hold_lease(shared: SharedState, until: float) -> None:
    shared.connection().execute(
        "UPDATE smart_launches SET lease_owner = x'01', lease_until = ?", (until,)
    )


def test_a_lease_left_by_a_dead_holder_lapses(
    shared: SharedState, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_sessions, "LEASE_POLL_SECONDS", 0.0)
    lease_clock = StepClock()
    store = SharedSessionStore(
        shared, Sealer(), clock, IDLE, lease_seconds=10, lease_clock=lease_clock
    )
    cookie, _ = store.open(None)
    store.add_launch(cookie, launch("r1", clock))
    _hold_lease(shared, lease_clock.now + 5)  # a worker died mid-refresh

    context = store.refresh_launch(
        cookie, "r1", "access-secret-1", lambda t: RefreshedTokens("access-2", None, None, None)
    )
    assert context is not None and context.access_token == "access-2"
    row = shared.connection().execute("SELECT lease_owner, lease_until FROM smart_launches")
    assert row.fetchone() == (None, 0)  # released


def test_a_waiter_gives_up_after_a_whole_lease(
    shared: SharedState, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_sessions, "LEASE_POLL_SECONDS", 0.0)
    lease_clock = StepClock()
    store = SharedSessionStore(
        shared, Sealer(), clock, IDLE, lease_seconds=10, lease_clock=lease_clock
    )
    cookie, _ = store.open(None)
    store.add_launch(cookie, launch("r1", clock))
    _hold_lease(shared, lease_clock.now + 1_000)  # someone keeps renewing it

    assert store.refresh_launch(cookie, "r1", "access-secret-1", _never) is None
    stored = store.launch(cookie, "r1")
    assert stored is not None and stored.refresh_token == "refresh-secret-1"  # untouched
