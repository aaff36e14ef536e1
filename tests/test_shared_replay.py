"""The JWT replay cache the worker processes share, in the shared-state file: its contract (what the
authenticator relies on), its pruning schedule and hashing, and its behaviour across processes.

Cross-process tests start real processes with ``multiprocessing`` (spawn: a fresh interpreter like
a non-preloaded worker; fork: a child of a process that already used the file, like a gunicorn
worker).
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable
from multiprocessing.context import ForkContext, SpawnContext
from pathlib import Path
from typing import Any

import pytest

from cds_service import create_app
from cds_service.security.ehr_auth import AuthenticationError, EhrAuthenticator, ReplayGuard
from cds_service.security.shared_replay import SharedReplayCache
from cds_service.security.trusted_issuers import mint_development_token
from cds_service.shared_state import SharedState
from tests.jwt_factory import NOW

ISS = "https://ehr.example.org"
CHILD_TIMEOUT_SECONDS = 60

MakeCache = Callable[..., ReplayGuard]



@pytest.fixture
def cache(shared: SharedState) -> MakeCache:
    """``cache(max_entries=…, max_ttl_seconds=…)``: a replay cache in this test's shared state."""

    def make(**kwargs: Any) -> ReplayGuard:
        return SharedReplayCache(shared, **kwargs)

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
    replay.check_and_remember(ISS, "a", expires_at=NOW + 300, now=NOW + 50)
    assert refused(replay, "b", NOW + 100, NOW + 50) == replayed("b")


def test_when_full_new_tokens_are_refused_until_entries_expire(cache: MakeCache) -> None:
    replay = cache(max_entries=3)
    for jti in "abc":
        replay.check_and_remember(ISS, jti, expires_at=NOW + 100, now=NOW)
    assert refused(replay, "d", NOW + 100, NOW) == "replay cache full; refusing new tokens"
    assert refused(replay, "a", NOW + 100, NOW) == replayed("a")  # a replay is still named as one
    replay.check_and_remember(ISS, "d", expires_at=NOW + 200, now=NOW + 100)  # expired: room


def test_no_entry_outlives_the_ttl_cap(cache: MakeCache) -> None:
    replay = cache(max_ttl_seconds=60)
    replay.check_and_remember(ISS, "a", expires_at=NOW + 10_000, now=NOW)
    assert refused(replay, "a", NOW + 10_000, NOW + 59) == replayed("a")
    replay.check_and_remember(ISS, "a", expires_at=NOW + 10_000, now=NOW + 61)


def test_a_cache_shorter_than_token_validity_is_refused(shared: SharedState) -> None:
    with pytest.raises(ValueError, match="max_ttl_seconds"):
        EhrAuthenticator([], replay_cache=SharedReplayCache(shared, max_ttl_seconds=3600))


# -- the shared cache ----------------------------------------------------------------------------


def test_expired_pairs_are_pruned_every_n_inserts_not_every_request(shared: SharedState) -> None:
    replay = SharedReplayCache(shared, prune_every=3)
    replay.check_and_remember(ISS, "a", expires_at=NOW + 10, now=NOW)
    replay.check_and_remember(ISS, "b", expires_at=NOW + 10, now=NOW)
    assert len(replay) == 2
    replay.check_and_remember(ISS, "c", expires_at=NOW + 100, now=NOW + 20)  # third: prunes
    assert len(replay) == 1
    replay.check_and_remember(ISS, "d", expires_at=NOW + 200, now=NOW + 150)
    assert len(replay) == 2  # "c" expired, but the next prune is three inserts away
    assert replay.prune(NOW + 150) == 1 and len(replay) == 1


def test_only_a_hash_of_the_pair_is_stored(shared: SharedState, tmp_path: Path) -> None:
    replay = SharedReplayCache(shared)
    jti = f"jti-{uuid.uuid4()}"
    replay.check_and_remember(ISS, jti, expires_at=NOW + 100, now=NOW)
    rows = shared.connection().execute("SELECT * FROM replay_seen").fetchall()
    assert len(rows) == 1 and len(rows[0][0]) == 32 and rows[0][1] == NOW + 100
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("shared.sqlite3*"))
    assert jti.encode() not in on_disk and ISS.encode() not in on_disk


def test_pairs_are_unambiguous(shared: SharedState) -> None:
    replay = SharedReplayCache(shared)
    replay.check_and_remember("https://a.example", "bc", expires_at=NOW + 100, now=NOW)
    replay.check_and_remember("https://a.exampleb", "c", expires_at=NOW + 100, now=NOW)


def test_a_broken_file_fails_closed(shared: SharedState) -> None:
    replay = SharedReplayCache(shared)
    shared.connection().execute("DROP TABLE replay_seen")
    assert refused(replay, "a", NOW + 100, NOW) == "replay cache unavailable (OperationalError)"


def test_the_app_refuses_a_token_another_app_on_the_same_file_accepted(tmp_path: Path) -> None:
    """Two apps built separately (as in two workers of a server that does not preload the app)
    share the replay cache through CDS_SHARED_STATE_PATH."""
    config = {
        "TESTING": True,
        "DEV_MODE": True,
        "PUBLIC_BASE_URL": "https://cds.example",
        "SHARED_STATE_PATH": str(tmp_path / "one-instance.sqlite3"),
    }
    first, second = create_app(config), create_app(config)
    try:
        url = "https://cds.example/cds-services"
        header = {"Authorization": f"Bearer {mint_development_token(url)}"}
        assert first.test_client().get("/cds-services", headers=header).status_code == 200
        assert second.test_client().get("/cds-services", headers=header).status_code == 401
        assert first.test_client().get("/cds-services", headers=header).status_code == 401
    finally:
        first.extensions["hfs_cds"].close()
        second.extensions["hfs_cds"].close()


# -- across processes --------------------------------------------------------------------------------


def _accept(path: str, jti: str, results: Any, barrier: Any = None) -> None:
    """In a child process: offer the pair to a cache on ``path``; report "accepted" or the reason."""
    state = SharedState(Path(path))
    replay = SharedReplayCache(state)
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


def test_a_pair_accepted_in_one_process_is_refused_in_another(shared: SharedState) -> None:
    spawn = multiprocessing.get_context("spawn")
    replay = SharedReplayCache(shared)
    replay.check_and_remember(ISS, "seen-here", expires_at=NOW + 100, now=NOW)

    assert _run(spawn, _accept, str(shared.path), "seen-here") == [
        f"replayed jti 'seen-here' from iss {ISS!r}"
    ]
    assert _run(spawn, _accept, str(shared.path), "seen-there") == ["accepted"]
    assert refused(replay, "seen-there", NOW + 100, NOW) == replayed("seen-there")


def test_of_processes_racing_with_one_token_exactly_one_wins(shared: SharedState) -> None:
    spawn = multiprocessing.get_context("spawn")
    SharedReplayCache(shared)  # the tables exist before the race
    results = spawn.Queue()
    barrier = spawn.Barrier(4)
    children = [
        spawn.Process(target=_accept, args=(str(shared.path), "raced", results, barrier))
        for _ in range(4)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=CHILD_TIMEOUT_SECONDS) for _ in children]
    for child in children:
        child.join(timeout=CHILD_TIMEOUT_SECONDS)
        assert child.exitcode == 0
    assert sorted(outcomes) == ["accepted"] + [f"replayed jti 'raced' from iss {ISS!r}"] * 3


#: Set in the parent before forking, read in the child (which has a copy of this module's state).
_forked_from: dict[str, Any] = {}


def _child_of_fork(results: Any) -> None:
    shared: SharedState = _forked_from["shared"]
    inherited = _forked_from["connection"]
    conn = shared.connection()
    results.put(conn is not inherited)
    results.put(getattr(conn, "owner_pid", None) == os.getpid())
    try:
        SharedReplayCache(shared).check_and_remember(
            ISS, "before-fork", expires_at=NOW + 100, now=NOW
        )
        results.put("accepted")
    except AuthenticationError as exc:
        results.put(exc.reason)
    SharedReplayCache(shared).check_and_remember(ISS, "in-child", expires_at=NOW + 100, now=NOW)
    shared.close()


def test_a_forked_child_opens_its_own_connection(shared: SharedState) -> None:
    fork = multiprocessing.get_context("fork")
    replay = SharedReplayCache(shared)
    replay.check_and_remember(ISS, "before-fork", expires_at=NOW + 100, now=NOW)
    _forked_from.update(shared=shared, connection=shared.connection())
    try:
        new_connection, owned, outcome = _run(fork, _child_of_fork)
    finally:
        _forked_from.clear()
    assert new_connection and owned
    assert outcome == replayed("before-fork")
    # The parent's connection still works after the child used the file and exited.
    assert refused(replay, "in-child", NOW + 100, NOW) == replayed("in-child")
    replay.check_and_remember(ISS, "after-fork", expires_at=NOW + 100, now=NOW)
