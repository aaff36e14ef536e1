"""The shared state's home: the store's own database (no second file), its connections, and the
purge schedule's life in each process.

What the replay cache and the SMART sessions keep there is tested with them
(``test_shared_replay.py``, ``test_smart_shared_store.py``, ``test_smart_units.py``).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

import tests.postgres
from cds_service import create_app
from cds_service.store.state import PurgeSchedule, StateDatabase

# Fixtures from tests/postgres.py (redundant once conftest.py lists it in pytest_plugins).
postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url


def test_the_app_keeps_its_state_in_the_store_database_and_no_other_file(tmp_path: Path) -> None:
    app = create_app({"TESTING": True, "AUTH_REQUIRED": False})
    try:
        runtime = app.extensions["hfs_cds"]
        assert runtime.state.engine.url == runtime.store.engine.url
        instance = tmp_path / "instance"  # conftest's CDS_INSTANCE_PATH
        assert sorted(p.name for p in instance.iterdir() if "shared" in p.name) == []
        assert runtime.purge.interval_seconds == 60.0
    finally:
        app.extensions["hfs_cds"].close()


def test_state_commits_do_not_wait_for_the_disk(any_state: StateDatabase) -> None:
    """Disposable rows: SQLite's synchronous NORMAL in WAL mode (audit and feedback keep FULL on
    their own connections), PostgreSQL's asynchronous commit; SQLite enforces the cascades."""
    with any_state.connect() as conn:
        if any_state.backend == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        else:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "off"


def test_single_statements_commit_by_themselves(any_state: StateDatabase) -> None:
    """The replay check's connection runs no BEGIN/COMMIT around its statement, yet what it wrote
    is visible to another connection at once."""
    with any_state.connect() as conn:
        conn.execute(
            text("INSERT INTO replay_seen (pair, until) VALUES (:p, 1.0)"), {"p": b"x" * 32}
        )
    with any_state.engine.connect() as other:
        assert other.execute(text("SELECT count(*) FROM replay_seen")).scalar() == 1


def test_the_schedule_runs_every_interval_and_stops_on_close() -> None:
    ran = threading.Event()
    calls: list[float] = []

    def task(now: float) -> int:
        calls.append(now)
        ran.set()
        return 0

    schedule = PurgeSchedule(0.02, (("task", task),))
    assert not calls  # nothing runs before the first use in the process
    schedule.ensure_running()
    schedule.ensure_running()  # once
    assert ran.wait(5.0)
    schedule.close()
    seen = len(calls)
    time.sleep(0.1)
    assert len(calls) == seen
    schedule.ensure_running()  # closed: stays stopped
    time.sleep(0.1)
    assert len(calls) == seen


_forked: dict[str, Any] = {}


def _child(results: Any) -> None:
    schedule: PurgeSchedule = _forked["schedule"]
    ran = threading.Event()

    def task(now: float) -> int:
        ran.set()
        return 0

    schedule.add("child", task)
    schedule.ensure_running()  # the parent's thread does not exist here: a new one starts
    results.put(ran.wait(5.0))


def test_a_forked_worker_runs_its_own_schedule() -> None:
    """gunicorn's master builds the app (and the schedule) and forks: each worker purges."""
    schedule = PurgeSchedule(0.02)
    schedule.ensure_running()  # running in the parent
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    _forked["schedule"] = schedule
    try:
        child = fork.Process(target=_child, args=(results,))
        child.start()
        assert results.get(timeout=30) is True
        child.join(timeout=30)
        assert child.exitcode == 0
    finally:
        _forked.clear()
        schedule.close()
