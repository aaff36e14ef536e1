"""One small SQLite file for the ephemeral state the worker processes of one instance share.

The JWT replay cache (:mod:`cds_service.security.shared_replay`) and the SMART sessions
(:mod:`cds_service.smart.shared_sessions`) live here, so gunicorn may run several workers. It is not
the audit store: nothing in it must survive, so it is opened with the stdlib ``sqlite3`` (this is on
the path of every authenticated request and must cost microseconds, not an ORM's milliseconds), in
WAL mode with ``synchronous=OFF`` (a crash may lose the last writes, as a restart lost the old
in-memory state), and each part's tables are dropped and recreated when their definition changes.

Connections: one per thread per process, opened lazily, never carried across ``fork`` (SQLite
forbids using a connection in a child process): a connection whose owner pid is not the current
pid is set aside unused and a new one opened. Set-up uses its own short-lived connection, so the
process that creates the app (gunicorn's master with ``preload_app``) holds none when it forks.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import weakref
import zlib
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Final

from cds_service.sqlite_wal import switch_to_wal

#: How long a statement waits for another process's write lock before failing.
BUSY_TIMEOUT_SECONDS: Final = 5.0
_PART = re.compile(r"[a-z][a-z0-9]*")
_META = (
    "CREATE TABLE IF NOT EXISTS shared_schema "
    "(part TEXT PRIMARY KEY, fingerprint INTEGER NOT NULL) WITHOUT ROWID"
)


class SharedStateError(Exception):
    """The shared-state file cannot be created or opened."""


class _Connection(sqlite3.Connection):
    """A connection that remembers the process that opened it (and can be weakly referenced)."""

    owner_pid: int


class _ThreadConnection:
    """A thread's connection, closed explicitly when the thread is gone (its ``threading.local``
    is cleared): servers that start a thread per request do not leave connections to the GC."""

    __slots__ = ("conn",)

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def __del__(self) -> None:
        if self.conn.owner_pid == os.getpid():
            self.conn.close()


# Connections inherited through fork: kept referenced so the child never closes (finalises) them,
# which could disturb the parent's locks; the child opens its own instead.
_inherited: list[_ThreadConnection] = []


class SharedState:
    """The shared-state file of one instance: its connections and its parts' schemas.

    Creating it creates the file (mode 0600) and its directory if needed; a file that is not a
    SQLite database is replaced. Consumers call :meth:`ensure_schema` once with their tables.
    """

    def __init__(self, path: Path, busy_timeout_seconds: float = BUSY_TIMEOUT_SECONDS) -> None:
        self.path = path
        self._busy_timeout = busy_timeout_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: weakref.WeakSet[_Connection] = weakref.WeakSet()
        try:
            self._create()
        except (OSError, sqlite3.Error) as exc:
            raise SharedStateError(f"cannot use {path}: {exc}") from exc

    # -- connections -----------------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection in this process (autocommit; use :meth:`write` for several
        statements that must commit together)."""
        held: _ThreadConnection | None = getattr(self._local, "held", None)
        pid = os.getpid()
        if held is not None and held.conn.owner_pid == pid:
            return held.conn
        if held is not None:
            _inherited.append(held)  # opened before a fork: never used or closed here
        conn = self._connect()
        self._local.held = _ThreadConnection(conn)
        with self._lock:
            self._opened.add(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: the write lock is taken up front, so a
        read-then-write inside cannot be invalidated by another process). Keep it short: no I/O."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connections this process opened (the app calls this on shutdown)."""
        pid = os.getpid()
        with self._lock:
            mine = [c for c in self._opened if c.owner_pid == pid]
            for conn in mine:
                self._opened.discard(conn)
        for conn in mine:
            conn.close()
        self._local.held = None

    # -- schema ----------------------------------------------------------------------------------

    def ensure_schema(self, part: str, statements: Sequence[str]) -> None:
        """Create ``part``'s tables (all named ``<part>_…``) unless they exist as ``statements``
        define them; tables of an older definition are dropped first (their rows are disposable).
        """
        if not _PART.fullmatch(part):
            raise ValueError(f"schema part {part!r} is not a plain lower-case name")
        fingerprint = zlib.crc32("\n".join(statements).encode())
        try:
            with closing(self._connect()) as conn:
                conn.execute("BEGIN IMMEDIATE")  # several processes may start at once
                row = conn.execute(
                    "SELECT fingerprint FROM shared_schema WHERE part = ?", (part,)
                ).fetchone()
                if row is None or row[0] != fingerprint:
                    old = conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? "
                        "ESCAPE '!'",
                        (f"{part}!_%",),
                    ).fetchall()
                    for (name,) in old:
                        conn.execute(f'DROP TABLE "{name}"')
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT OR REPLACE INTO shared_schema (part, fingerprint) VALUES (?, ?)",
                        (part, fingerprint),
                    )
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SharedStateError(
                f"cannot create the {part} tables in {self.path}: {exc}"
            ) from exc

    # -- internals -------------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # used by one thread only, but closed by close()
            factory=_Connection,
            cached_statements=64,
        )
        assert isinstance(conn, _Connection)
        conn.owner_pid = os.getpid()
        # Ephemeral state: no fsync (a crash may lose the last writes, nothing else).
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)  # also when an older file was looser; -wal/-shm follow it
        try:
            self._initialise()
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode not in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise  # e.g. busy: another process is using the file, never delete it then
            # Not a database (or damaged): the state is disposable, start again with a new file.
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self._initialise()

    def _initialise(self) -> None:
        with closing(self._connect()) as conn:
            if switch_to_wal(conn, self._busy_timeout).lower() != "wal":
                raise SharedStateError(f"{self.path}: WAL mode is not available")
            conn.execute(_META)


__all__ = ["BUSY_TIMEOUT_SECONDS", "SharedState", "SharedStateError"]
