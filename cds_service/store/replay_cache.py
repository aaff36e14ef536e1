"""The JWT replay cache in the store's database, shared by every worker and every replica.

A token replayed to any process on the same database must be refused like one replayed to the same
process, so the accepted ``(iss, jti)`` pairs live in the ``replay_seen`` table
(:mod:`cds_service.store.schema`) as a SHA-256 of the pair (the raw values are never stored), each
with the time until which it must be refused.

An accepted token costs one statement on a pooled connection: ``INSERT … ON CONFLICT (pair) DO
NOTHING`` (SQLAlchemy Core, compiled once; both SQLite and PostgreSQL have it), whose row count says
whether the pair was new. Only a conflict, which is rare, looks further: a conditional ``UPDATE``
takes the pair over if its entry has expired but was not purged yet (atomic: one racer wins),
otherwise it is a replay. Expired pairs are deleted by the store's purge schedule
(:class:`~cds_service.store.state.PurgeSchedule`), not on the request path.

The size bound: a flood of valid-but-unique tokens from a trusted issuer must not grow the table
without bound, so new tokens are refused (fail closed) once ``max_entries`` live pairs are stored:
with :class:`~cds_service.security.ReplayCheckUnavailable` (503, retry later), not as a failed
authentication, since the token may well be valid; a replay is still named as one.
Counting rows on every call would cost a scan, so each process counts at each purge and adds what
it inserted since; when that estimate reaches the bound it purges and counts again (at most once a
second), and refuses if the table is still full. Across processes the bound is therefore
approximate: it may be passed by what the other processes insert between two counts.

A database error never becomes a refusal of a possibly valid token. While the database is away,
pairs are remembered in this process's memory (:mod:`.replay_fallback`: a replay to the same
process is still refused; WARNING logged; shown on ``/readyz``) and written to the table when it
answers again. Only when that memory is full too does the check raise
:class:`~cds_service.security.ReplayCheckUnavailable`, which the web layer answers with 503.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from typing import Final

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from cds_service.security import AuthenticationError, ReplayCheckUnavailable, quoted
from cds_service.store.replay_fallback import MemoryFallback, ReplayStatus
from cds_service.store.schema import replay_seen
from cds_service.store.state import PurgeSchedule, StateDatabase

#: Why a new token is refused when the cache holds ``max_entries`` live pairs.
REPLAY_CACHE_FULL: Final = "replay cache full; refusing new tokens"
#: Least time between two recounts while the cache looks full (seconds of the caller's clock).
RECOUNT_SECONDS: Final = 1.0
#: Why a new token cannot be checked when neither the database nor the memory fallback has room.
FALLBACK_FULL: Final = "replay check unavailable: database away and in-memory fallback full"

_T = replay_seen.c


class ReplayCache:
    """Seen ``(iss, jti)`` pairs in the store, each kept until the token it came from can no
    longer pass (a :class:`~cds_service.security.ehr_auth.ReplayGuard`)."""

    def __init__(
        self,
        state: StateDatabase,
        *,
        max_entries: int = 100_000,
        max_ttl_seconds: float = 3600.0,
        schedule: PurgeSchedule | None = None,
        fallback_entries: int = 100_000,
        retry_seconds: float = 2.0,
    ) -> None:
        self.max_entries = max_entries
        self.max_ttl_seconds = max_ttl_seconds
        self._state = state
        self._schedule = schedule
        self._fallback = MemoryFallback(fallback_entries, retry_seconds)
        insert = postgresql.insert if state.backend == "postgresql" else sqlite.insert
        # An INSERT's row count is kept only when asked for (SQLAlchemy memoises it for UPDATE and
        # DELETE alone; PostgreSQL's would read -1 otherwise).
        self._insert = (
            insert(replay_seen)
            .on_conflict_do_nothing(index_elements=[_T.pair])
            .execution_options(preserve_rowcount=True)
        )
        # Write-back after an outage: an older (expired, unpurged) row of a pair accepted in
        # memory meanwhile takes the newer time, or the pair could be taken over again.
        upsert = insert(replay_seen)
        self._write_back_stmt = upsert.on_conflict_do_update(
            index_elements=[_T.pair],
            set_={"until": upsert.excluded.until},
            where=_T.until < upsert.excluded.until,
        )
        self._retake = (
            update(replay_seen)
            .where(_T.pair == bindparam("key"), _T.until <= bindparam("now"))
            .values(until=bindparam("new_until"))
        )
        self._live = select(_T.pair).where(
            _T.pair == bindparam("pair"), _T.until > bindparam("now")
        )
        # SQLite: the insert on a connection each thread keeps (see _SqliteInserter); PostgreSQL:
        # the Core statement on a pooled connection.
        self._sqlite = _SqliteInserter(state) if state.backend == "sqlite" else None
        self._lock = threading.Lock()
        self._estimate = 0  # live pairs at the last count + those this process inserted since
        self._counted_at: float | None = None
        if schedule is not None:
            schedule.add("replay cache", self.purge)

    def __len__(self) -> int:
        """Stored pairs, expired ones not yet purged included."""
        with self._state.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(replay_seen)).scalar() or 0)

    def check_and_remember(self, iss: str, jti: str, expires_at: float, now: float) -> None:
        """Record the pair until ``expires_at`` (capped at ``now + max_ttl_seconds``), or raise
        ``AuthenticationError`` (a replay) or ``ReplayCheckUnavailable`` (the cache is full, or
        neither the database nor the memory fallback can tell)."""
        if self._schedule is not None:
            self._schedule.ensure_running()
        pair = _pair(iss, jti)
        until = min(expires_at, now + self.max_ttl_seconds)
        fallback = self._fallback
        if fallback.skip_database():
            return self._in_memory(pair, until, now, iss, jti)
        try:
            if fallback.active:
                if fallback.is_live(pair, now):
                    raise _replayed(iss, jti)  # accepted here during the outage
                self._write_back(now)  # what memory holds goes to the table first
            if self._estimate >= self.max_entries and not self._room(now):
                if self._is_live(pair, now):
                    raise _replayed(iss, jti)  # a replay is still named as one
                raise ReplayCheckUnavailable(REPLAY_CACHE_FULL)  # may be valid: not a 401
            if self._sqlite is not None:
                inserted = self._sqlite.insert(pair, until)
            else:
                with self._state.connect() as conn:
                    stmt = conn.execute(self._insert, {"pair": pair, "until": until})
                    inserted = stmt.rowcount == 1
            if inserted:
                with self._lock:
                    self._estimate += 1
                return
            # The pair is stored: live (a replay), or expired and not purged yet.
            with self._state.connect() as conn:
                params = {"key": pair, "new_until": until, "now": now}
                taken = conn.execute(self._retake, params).rowcount == 1
        except (SQLAlchemyError, sqlite3.Error) as exc:
            # Not a 401: the token may be valid. Remember it here until the database is back.
            fallback.failed(exc)
            return self._in_memory(pair, until, now, iss, jti)
        if not taken:
            raise _replayed(iss, jti)

    def status(self, now: float) -> ReplayStatus:
        """Where this process keeps its pairs now (``/readyz``)."""
        return self._fallback.status(now)

    def purge(self, now: float) -> int:
        """Forget the pairs whose tokens can no longer pass, and count those left; how many went.

        Run by the purge schedule; raises SQLAlchemy's errors (the schedule logs them)."""
        self._fallback.prune(now)
        with self._state.write() as conn:
            deleted = conn.execute(delete(replay_seen).where(_T.until <= now)).rowcount
            left = int(conn.execute(select(func.count()).select_from(replay_seen)).scalar() or 0)
        with self._lock:
            self._estimate, self._counted_at = left, now
        return int(deleted)

    def _room(self, now: float) -> bool:
        """Whether there is room below ``max_entries`` after purging (recounted at most once a
        second while full)."""
        if self._counted_at is None or now - self._counted_at >= RECOUNT_SECONDS:
            self.purge(now)
        return self._estimate < self.max_entries

    def _in_memory(self, pair: bytes, until: float, now: float, iss: str, jti: str) -> None:
        """The check without the database (see :mod:`.replay_fallback`)."""
        kept = self._fallback.remember(pair, until, now)
        if kept is None:
            raise ReplayCheckUnavailable(FALLBACK_FULL)
        if not kept:
            raise _replayed(iss, jti)

    def _write_back(self, now: float) -> None:
        """Write the pairs accepted during the outage to the table, then end the outage; raises
        SQLAlchemy's errors (the outage goes on)."""
        pending = self._fallback.pending(now)
        if pending:
            with self._state.write() as conn:
                rows = [{"pair": p, "until": u} for p, u in pending.items()]
                conn.execute(self._write_back_stmt, rows)
        self._fallback.recovered(pending)

    def _is_live(self, pair: bytes, now: float) -> bool:
        with self._state.connect() as conn:
            return conn.execute(self._live, {"pair": pair, "now": now}).first() is not None


def _replayed(iss: str, jti: str) -> AuthenticationError:
    return AuthenticationError(f"replayed jti {quoted(jti)} from iss {quoted(iss)}")


def _pair(iss: str, jti: str) -> bytes:
    """SHA-256 of the pair, length-prefixed so no two pairs share an encoding."""
    raw_iss = iss.encode("utf-8", "surrogatepass")
    raw_jti = jti.encode("utf-8", "surrogatepass")
    return hashlib.sha256(len(raw_iss).to_bytes(4, "big") + raw_iss + raw_jti).digest()


__all__ = ["FALLBACK_FULL", "REPLAY_CACHE_FULL", "ReplayCache"]


class _SqliteInserter:
    """The replay check's insert on the embedded SQLite file, on a connection each thread keeps.

    Every authenticated hook call pays for this statement. Through SQLAlchemy's execution path it
    cost about 135 us in process, against about 40 us for SQLite's own work, and the benchmark's S3
    (hook + RS384 JWT) fell from 0.28 to 0.18 of the static endpoint; on the DBAPI connection it
    keeps, a thread pays only SQLite's part. The connection comes from the state's pool (so it has
    the pool's set-up: WAL, busy timeout, autocommit) and goes back when its thread ends; a forked
    child opens its own. PostgreSQL keeps the Core statement (a network round trip dominates).
    """

    _SQL = "INSERT INTO replay_seen (pair, until) VALUES (?, ?) ON CONFLICT (pair) DO NOTHING"

    def __init__(self, state: StateDatabase) -> None:
        self._state = state
        self._local = threading.local()
        self._inherited: list[object] = []

    def insert(self, pair: bytes, until: float) -> bool:
        """Whether the pair was new (inserted); raises ``sqlite3.Error`` on a database error."""
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is None or local.pid != os.getpid():
            if connection is not None:  # the parent's, copied by a fork: never used nor closed
                self._inherited.append(connection)
            connection = local.connection = self._state.engine.raw_connection()
            local.pid = os.getpid()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._SQL, (pair, until))
                return bool(cursor.rowcount == 1)
            finally:
                cursor.close()
        except sqlite3.Error:
            local.connection = None  # a broken connection is not kept
            connection.invalidate()
            raise
