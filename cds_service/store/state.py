"""The ephemeral shared state's connection pool and its purge schedule (issue 14).

The JWT replay cache (:mod:`cds_service.store.replay_cache`) and the SMART sessions
(:mod:`cds_service.smart.shared_sessions`) keep their rows in the store's database
(:mod:`.schema`, schema 5): the embedded SQLite file by default, PostgreSQL when
``CDS_DATABASE_URL`` names one. Every worker process and every replica on the database therefore
sees the same state: a token accepted by one is refused by all, and a SMART launch begun on one
finishes on any.

:class:`StateDatabase` is a pool of its own on that database, opened with
:func:`~cds_service.store.database.open_state_engine` (commits that do not wait for the disk: the
rows are disposable). :class:`PurgeSchedule` deletes expired rows every ``interval`` seconds from a
daemon thread in each process that uses the state, so an idle instance does not keep them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from cds_service.store.database import (
    describe,
    normalise_url,
    open_state_engine,
    single_statements,
)

log = logging.getLogger(__name__)

#: A purge task: given "now" (POSIX seconds), delete what has expired; the number of rows deleted.
PurgeTask = Callable[[float], int]


class StateDatabase:
    """The connection pool of the shared state (thread-safe; one per process, fork-aware)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._single = single_statements(engine)
        ref = weakref.ref(self)

        def forget_pool() -> None:
            # A forked worker must not use the parent's pooled connections (SQLite forbids it,
            # and a PostgreSQL socket shared by two processes interleaves their messages).
            state = ref()
            if state is not None:
                state.engine.dispose(close=False)

        os.register_at_fork(after_in_child=forget_pool)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def describe(self) -> str:
        return describe(self.engine.url)

    def connect(self) -> Connection:
        """A pooled connection on which every statement commits by itself (use as a context
        manager): for single atomic statements, such as the replay check's insert."""
        return self._single.connect()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction (SQLite: ``BEGIN IMMEDIATE``, the write lock up front, so a read
        then a write inside cannot be overtaken by another process). Keep it short: no I/O."""
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()


def open_state(url: str | URL) -> StateDatabase:
    """The shared state on the store's database (whose schema :func:`open_store` has checked)."""
    return StateDatabase(open_state_engine(url if isinstance(url, URL) else normalise_url(url)))


class PurgeSchedule:
    """Runs purge tasks every ``interval_seconds`` in a daemon thread, started on first use in each
    process (:meth:`ensure_running`, cheap enough for every request) so that a server forking its
    workers after building the app (gunicorn ``preload_app``) purges in every worker.

    A task that fails is logged (its exception class only) and tried again next time. ``clock`` is
    POSIX time, the same in every process and replica.
    """

    def __init__(
        self,
        interval_seconds: float,
        tasks: tuple[tuple[str, PurgeTask], ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval_seconds > 0:
            raise ValueError("the purge interval must be above 0 seconds")
        self.interval_seconds = interval_seconds
        self._tasks = list(tasks)
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False  # read without the lock on the request path
        self._closed = False
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(me))

    def add(self, name: str, task: PurgeTask) -> None:
        """Purge ``name`` with ``task`` from the next round on."""
        with self._lock:
            self._tasks.append((name, task))

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running yet."""
        if self._running:
            return
        with self._lock:
            if self._running or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="hfs-cds-purge", daemon=True)
            self._thread.start()
            self._running = True

    def run_once(self) -> dict[str, int]:
        """Run every task now; rows deleted per task (a failed task is logged and left out)."""
        now = self._clock()
        with self._lock:
            tasks = list(self._tasks)
        deleted: dict[str, int] = {}
        for name, task in tasks:
            try:
                deleted[name] = task(now)
            except Exception as exc:  # the database may be away: try again next round
                log.warning("purge of %s failed: %s", name, type(exc).__name__)
        return deleted

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            self._running = False
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.run_once()

    def _after_fork_in_child(self) -> None:
        """The parent's thread does not exist here: start afresh on first use."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._running = False


def _reset_in_child(ref: weakref.ref[PurgeSchedule]) -> None:
    schedule = ref()
    if schedule is not None:
        schedule._after_fork_in_child()


__all__ = ["PurgeSchedule", "PurgeTask", "StateDatabase", "open_state"]
