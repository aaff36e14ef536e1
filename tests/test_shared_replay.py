"""The JWT replay cache in the store's database, shared by every worker and replica: its contract
(what the authenticator relies on), its purge schedule and hashing, a database failure (503, never
401), and its behaviour across processes and app instances, on SQLite and on PostgreSQL.

Cross-process tests start real processes with ``multiprocessing`` (spawn: a fresh interpreter like
a non-preloaded worker or another replica; fork: a child of a process that already used the
database, like a gunicorn worker).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from collections.abc import Callable
from multiprocessing.context import ForkContext, SpawnContext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.pool import QueuePool

import tests.postgres
from cds_service import create_app
from cds_service.security import ReplayCheckUnavailable
from cds_service.security.ehr_auth import AuthenticationError, EhrAuthenticator, ReplayGuard
from cds_service.security.trusted_issuers import mint_development_token
from cds_service.store.replay_cache import FALLBACK_FULL, ReplayCache
from cds_service.store.schema import replay_seen
from cds_service.store.state import PurgeSchedule, StateDatabase, open_state
from tests.conftest import migrated_state
from tests.jwt_factory import NOW

# Fixtures from tests/postgres.py (redundant once conftest.py lists it in pytest_plugins).
postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url

ISS = "https://ehr.example.org"
CHILD_TIMEOUT_SECONDS = 60

MakeCache = Callable[..., ReplayCache]


@pytest.fixture
def cache(any_state: StateDatabase) -> MakeCache:
    """``cache(max_entries=…, max_ttl_seconds=…)``: a replay cache on this test's database."""

    def make(**kwargs: Any) -> ReplayCache:
        return ReplayCache(any_state, **kwargs)

    return make


def replayed(jti: str) -> str:
    return f"replayed jti {jti!r} from iss {ISS!r}"


def refused(cache: ReplayGuard, jti: str, expires_at: float, now: float) -> str:
    """The refusal's reason (the test fails if the pair is accepted)."""
    with pytest.raises(AuthenticationError) as caught:
        cache.check_and_remember(ISS, jti, expires_at=expires_at, now=now)
    return caught.value.reason


# -- the contract ------------------------------------------------------------------------------------


def test_a_pair_is_accepted_once(cache: MakeCache) -> None:
    replay = cache()
    replay.check_and_remember(ISS, "a", expires_at=NOW + 100, now=NOW)
    assert refused(replay, "a", NOW + 100, NOW + 1) == f"replayed jti 'a' from iss {ISS!r}"
    replay.check_and_remember("https://other.example", "a", expires_at=NOW + 100, now=NOW)


def test_an_expired_pair_may_come_back(cache: MakeCache) -> None:
    replay = cache(max_entries=10)
    replay.check_and_remember(ISS, "a", expires_at=NOW + 10, now=NOW)
    replay.check_and_remember(ISS, "b", expires_at=NOW + 100, now=NOW)
    assert refused(replay, "a", NOW + 10, NOW + 10 - 1) == replayed("a")
    # Not purged yet: the expired entry is taken over in place.
    replay.check_and_remember(ISS, "a", expires_at=NOW + 300, now=NOW + 50)
    assert refused(replay, "a", NOW + 300, NOW + 60) == replayed("a")
    assert refused(replay, "b", NOW + 100, NOW + 50) == replayed("b")


def test_when_full_new_tokens_are_refused_until_entries_expire(cache: MakeCache) -> None:
    replay = cache(max_entries=3)
    for jti in "abc":
        replay.check_and_remember(ISS, jti, expires_at=NOW + 100, now=NOW)
    with pytest.raises(ReplayCheckUnavailable, match="^replay cache full; refusing new tokens$"):
        replay.check_and_remember(ISS, "d", expires_at=NOW + 100, now=NOW)  # may be valid: no 401
    assert refused(replay, "a", NOW + 100, NOW) == replayed("a")  # a replay is still named as one
    replay.check_and_remember(ISS, "d", expires_at=NOW + 200, now=NOW + 100)  # expired: room


def test_no_entry_outlives_the_ttl_cap(cache: MakeCache) -> None:
    replay = cache(max_ttl_seconds=60)
    replay.check_and_remember(ISS, "a", expires_at=NOW + 10_000, now=NOW)
    assert refused(replay, "a", NOW + 10_000, NOW + 59) == replayed("a")
    replay.check_and_remember(ISS, "a", expires_at=NOW + 10_000, now=NOW + 61)


def test_a_cache_shorter_than_token_validity_is_refused(state: StateDatabase) -> None:
    with pytest.raises(ValueError, match="max_ttl_seconds"):
        EhrAuthenticator([], replay_cache=ReplayCache(state, max_ttl_seconds=3600))


# -- the shared cache ----------------------------------------------------------------------------


def test_expired_pairs_are_purged_on_a_schedule_not_on_the_request_path(
    any_state: StateDatabase,
) -> None:
    """Issue 14: an idle instance forgets expired pairs too; inserting never purges."""
    schedule = PurgeSchedule(0.05)
    replay = ReplayCache(any_state, schedule=schedule)
    now = time.time()
    try:
        replay.check_and_remember(ISS, "old-1", expires_at=now - 10, now=now - 20)
        replay.check_and_remember(ISS, "old-2", expires_at=now - 10, now=now - 20)
        replay.check_and_remember(ISS, "live", expires_at=now + 600, now=now)  # starts the thread
        deadline = time.monotonic() + 10
        while len(replay) > 1:
            assert time.monotonic() < deadline, "the schedule never purged"
            time.sleep(0.02)
        assert refused(replay, "live", now + 600, time.time()) == replayed("live")
    finally:
        schedule.close()


def test_a_purge_that_fails_is_logged_and_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[float] = []

    def flaky(now: float) -> int:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("database away")
        return 3

    schedule = PurgeSchedule(60, (("flaky", flaky),), clock=lambda: 1.0)
    assert schedule.run_once() == {}
    assert "purge of flaky failed: RuntimeError" in caplog.text
    assert schedule.run_once() == {"flaky": 3} and calls == [1.0, 1.0]
    with pytest.raises(ValueError, match="interval"):
        PurgeSchedule(0)


def test_only_a_hash_of_the_pair_is_stored(any_state: StateDatabase, tmp_path: Path) -> None:
    replay = ReplayCache(any_state)
    jti = f"jti-{uuid.uuid4()}"
    replay.check_and_remember(ISS, jti, expires_at=NOW + 100, now=NOW)
    with any_state.connect() as conn:
        rows = conn.execute(select(replay_seen)).all()
    assert len(rows) == 1 and len(rows[0].pair) == 32 and rows[0].until == NOW + 100
    assert jti.encode() not in bytes(rows[0].pair)
    if any_state.backend == "sqlite":
        any_state.close()  # everything written
        on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("*.sqlite3*"))
        assert on_disk and jti.encode() not in on_disk and ISS.encode() not in on_disk


def test_pairs_are_unambiguous(any_state: StateDatabase) -> None:
    replay = ReplayCache(any_state)
    replay.check_and_remember("https://a.example", "bc", expires_at=NOW + 100, now=NOW)
    replay.check_and_remember("https://a.exampleb", "c", expires_at=NOW + 100, now=NOW)


def _recreate_table(state: StateDatabase) -> None:
    """The database is back (here: the table the outage took away)."""
    replay_seen.create(state.engine)


def test_while_the_database_is_away_pairs_are_kept_in_memory(
    any_state: StateDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14, item 3: cards keep flowing; a replay to the same process is still refused; what
    was accepted meanwhile reaches the table when it answers again, for every process to see."""
    replay = ReplayCache(any_state, retry_seconds=0.0)
    replay.check_and_remember(ISS, "before", expires_at=NOW + 100, now=NOW)
    with any_state.write() as conn:
        conn.execute(text("DROP TABLE replay_seen"))  # the outage

    replay.check_and_remember(ISS, "during", expires_at=NOW + 100, now=NOW)  # no 401, no 503
    assert refused(replay, "during", NOW + 100, NOW + 1) == replayed("during")
    status = replay.status(NOW + 1)
    assert (status.fallback, status.entries, status.full) == (True, 1, False)
    assert status.to_json(status.since + 5)["store"] == "memory"  # type: ignore[operator]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "memory" in warnings[0].getMessage()

    _recreate_table(any_state)  # the database answers again
    replay.check_and_remember(ISS, "after", expires_at=NOW + 100, now=NOW + 2)
    assert replay.status(NOW + 2).fallback is False
    other = ReplayCache(any_state)  # another worker or replica
    assert refused(other, "during", NOW + 100, NOW + 3) == replayed("during")
    assert refused(other, "after", NOW + 100, NOW + 3) == replayed("after")
    assert "available again" in caplog.text


def test_when_the_memory_is_full_too_the_check_is_unavailable_never_a_refusal(
    any_state: StateDatabase,
) -> None:
    replay = ReplayCache(any_state, fallback_entries=2)
    with any_state.write() as conn:
        conn.execute(text("DROP TABLE replay_seen"))
    for jti in "ab":
        replay.check_and_remember(ISS, jti, expires_at=NOW + 100, now=NOW)
    with pytest.raises(ReplayCheckUnavailable) as caught:
        replay.check_and_remember(ISS, "c", expires_at=NOW + 100, now=NOW)
    assert caught.value.reason == FALLBACK_FULL
    assert replay.status(NOW).full
    assert refused(replay, "a", NOW + 100, NOW) == replayed("a")  # a replay is still one
    replay.check_and_remember(ISS, "c", expires_at=NOW + 200, now=NOW + 100)  # expired: room


def test_an_unreachable_server_falls_back_at_once_and_tries_again_later() -> None:
    """Nothing listens on port 1: the connection is refused, and the next calls within the retry
    interval do not try again (a hanging server would cost one caller per interval)."""
    dead = open_state("postgresql://hfs:secret@127.0.0.1:1/hfs")
    try:
        replay = ReplayCache(dead, retry_seconds=60.0)
        started = time.monotonic()
        replay.check_and_remember(ISS, "a", expires_at=NOW + 100, now=NOW)
        assert refused(replay, "a", NOW + 100, NOW) == replayed("a")
        for i in range(50):
            replay.check_and_remember(ISS, f"n{i}", expires_at=NOW + 100, now=NOW)
        assert time.monotonic() - started < 5.0
        assert replay.status(NOW).entries == 51
    finally:
        dead.close()


def _dev_token_header(url: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_development_token(url)}"}


def test_the_app_answers_cards_during_an_outage_and_503_not_401_when_it_cannot(
    database_url: str,
) -> None:
    migrated_state(database_url).close()
    app = create_app(
        {
            "TESTING": True,
            "DEV_MODE": True,
            "PUBLIC_BASE_URL": "https://cds.example",
            "DATABASE_URL": database_url,
            "REPLAY_FALLBACK_ENTRIES": 2,
        }
    )
    try:
        client = app.test_client()
        with app.extensions["hfs_cds"].state.write() as conn:
            conn.execute(text("DROP TABLE replay_seen"))
        url = "https://cds.example/cds-services"
        first = _dev_token_header(url)
        assert client.get("/cds-services", headers=first).status_code == 200  # kept in memory
        assert client.get("/cds-services", headers=first).status_code == 401  # a replay
        ready = client.get("/readyz")
        check = ready.get_json()["replayCheck"]
        assert ready.status_code == 200 and check["store"] == "memory" and check["entries"] == 1
        assert check["seconds"] >= 0 and check["since"].endswith("+00:00")

        assert client.get("/cds-services", headers=_dev_token_header(url)).status_code == 200
        response = client.get("/cds-services", headers=_dev_token_header(url))  # no room left
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        (issue,) = response.get_json()["issue"]
        assert issue["code"] == "transient"
        assert issue["diagnostics"] == "the JWT replay check is unavailable; retry later"
        assert "WWW-Authenticate" not in response.headers
        full = client.get("/readyz")
        assert full.status_code == 503 and full.get_json()["replayCheck"]["full"] is True
    finally:
        app.extensions["hfs_cds"].close()


def test_a_full_replay_table_is_a_503_retry_not_a_401(database_url: str) -> None:
    """With the database up and the table at its bound (a flood of valid tokens), a new token may
    well be valid: 503 with Retry-After, as when the check cannot be made; a replay is a 401."""
    migrated_state(database_url).close()
    app = create_app(
        {"TESTING": True, "DEV_MODE": True, "PUBLIC_BASE_URL": "https://cds.example",
         "DATABASE_URL": database_url}
    )  # fmt: skip
    try:
        app.extensions["hfs_cds"].replay.max_entries = 2
        client = app.test_client()
        url = "https://cds.example/cds-services"
        first = _dev_token_header(url)
        assert client.get("/cds-services", headers=first).status_code == 200
        assert client.get("/cds-services", headers=_dev_token_header(url)).status_code == 200
        response = client.get("/cds-services", headers=_dev_token_header(url))
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert response.get_json()["issue"][0]["code"] == "transient"
        assert "WWW-Authenticate" not in response.headers
        assert client.get("/cds-services", headers=first).status_code == 401  # still a replay
    finally:
        app.extensions["hfs_cds"].close()


def test_the_app_refuses_a_token_another_app_on_the_same_database_accepted(
    database_url: str,
) -> None:
    """Two apps built separately (two replicas, or two workers of a server that does not preload
    the app) share the replay cache through the database they are configured with."""
    migrated_state(database_url).close()
    config = {
        "TESTING": True,
        "DEV_MODE": True,
        "PUBLIC_BASE_URL": "https://cds.example",
        "DATABASE_URL": database_url,
    }
    first, second = create_app(config), create_app(config)
    try:
        header = _dev_token_header("https://cds.example/cds-services")
        assert first.test_client().get("/cds-services", headers=header).status_code == 200
        assert second.test_client().get("/cds-services", headers=header).status_code == 401
        assert first.test_client().get("/cds-services", headers=header).status_code == 401
    finally:
        first.extensions["hfs_cds"].close()
        second.extensions["hfs_cds"].close()


# -- across processes --------------------------------------------------------------------------------


def _accept(url: str, jti: str, results: Any, barrier: Any = None) -> None:
    """In a child process: offer the pair to a cache on ``url``; report "accepted" or the reason."""
    state = open_state(url)
    replay = ReplayCache(state)
    if barrier is not None:
        barrier.wait(timeout=CHILD_TIMEOUT_SECONDS)
    try:
        replay.check_and_remember(ISS, jti, expires_at=NOW + 100, now=NOW)
        results.put("accepted")
    except AuthenticationError as exc:
        results.put(exc.reason)
    finally:
        state.close()


_DONE = "--done--"


def _then_done(target: Callable[..., None], args: tuple[Any, ...], results: Any) -> None:
    target(*args, results)
    results.put(_DONE)


def _run(ctx: SpawnContext | ForkContext, target: Callable[..., None], *args: Any) -> list[Any]:
    """Run ``target(*args, results)`` in one child process of ``ctx``; what it put in ``results``."""
    results = ctx.Queue()
    child = ctx.Process(target=_then_done, args=(target, args, results))
    child.start()
    out = []
    while (item := results.get(timeout=CHILD_TIMEOUT_SECONDS)) != _DONE:
        out.append(item)
    child.join(timeout=CHILD_TIMEOUT_SECONDS)
    assert child.exitcode == 0, f"child exited with {child.exitcode}"
    return out


def test_a_pair_accepted_in_one_process_is_refused_in_another(
    any_state: StateDatabase, database_url: str
) -> None:
    spawn = multiprocessing.get_context("spawn")
    replay = ReplayCache(any_state)
    replay.check_and_remember(ISS, "seen-here", expires_at=NOW + 100, now=NOW)

    assert _run(spawn, _accept, database_url, "seen-here") == [
        f"replayed jti 'seen-here' from iss {ISS!r}"
    ]
    assert _run(spawn, _accept, database_url, "seen-there") == ["accepted"]
    assert refused(replay, "seen-there", NOW + 100, NOW) == replayed("seen-there")


def test_of_processes_racing_with_one_token_exactly_one_wins(
    any_state: StateDatabase, database_url: str
) -> None:
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    barrier = spawn.Barrier(4)
    children = [
        spawn.Process(target=_accept, args=(database_url, "raced", results, barrier))
        for _ in range(4)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=CHILD_TIMEOUT_SECONDS) for _ in children]
    for child in children:
        child.join(timeout=CHILD_TIMEOUT_SECONDS)
        assert child.exitcode == 0
    assert sorted(outcomes) == ["accepted"] + [f"replayed jti 'raced' from iss {ISS!r}"] * 3


def _pool(state: StateDatabase) -> QueuePool:
    pool = state.engine.pool
    assert isinstance(pool, QueuePool)
    return pool


#: Set in the parent before forking, read in the child (which has a copy of this module's state).
_forked_from: dict[str, Any] = {}


def _child_of_fork(results: Any) -> None:
    state: StateDatabase = _forked_from["state"]
    # The parent's pooled connections were dropped at the fork, not reused (nor closed) here.
    results.put(_pool(state).checkedin() == 0)
    results.put(_forked_from["pid"] != os.getpid())
    replay = ReplayCache(state)
    try:
        replay.check_and_remember(ISS, "before-fork", expires_at=NOW + 100, now=NOW)
        results.put("accepted")
    except AuthenticationError as exc:
        results.put(exc.reason)
    replay.check_and_remember(ISS, "in-child", expires_at=NOW + 100, now=NOW)
    state.close()


def test_a_forked_child_opens_its_own_connection(any_state: StateDatabase) -> None:
    fork = multiprocessing.get_context("fork")
    replay = ReplayCache(any_state)
    replay.check_and_remember(ISS, "before-fork", expires_at=NOW + 100, now=NOW)
    pool = _pool(any_state)
    assert pool.checkedin() + pool.checkedout() >= 1  # the parent holds a pooled connection
    _forked_from.update(state=any_state, pid=os.getpid())
    try:
        fresh_pool, other_process, outcome = _run(fork, _child_of_fork)
    finally:
        _forked_from.clear()
    assert fresh_pool and other_process
    assert outcome == replayed("before-fork")
    # The parent's connection still works after the child used the database and exited.
    assert refused(replay, "in-child", NOW + 100, NOW) == replayed("in-child")
    replay.check_and_remember(ISS, "after-fork", expires_at=NOW + 100, now=NOW)
