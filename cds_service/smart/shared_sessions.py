"""SMART sessions in the shared-state file, so every worker process of the instance serves them.

Same behaviour and bounds as the in-memory :class:`~cds_service.smart.sessions.SessionStore`: idle
expiry, at most ``max_sessions`` signed-in sessions and ``max_pending_sessions`` pending ones, each
pool evicting its own least recently used (``signed_in`` tells them apart), per-session maxima of
pending authorizations, launches and remembered used ``state`` values, pending authorizations
valid for ``PENDING_TTL`` and usable once, a cookie value never adopted unless this store issued
it, and a new id at sign-in (the session's rows move to it, re-sealed for it, in one write
transaction; the old id is deleted). What reaches the disk:

* a session's id is the SHA-256 of its cookie, a ``state`` is stored as its SHA-256;
* PKCE verifiers, tokens and the launch context (patient id included) are sealed with the app's
  in-memory key (:class:`~cds_service.smart.sealing.Sealer`), bound to their row;
* each session records which key sealed its secrets: a session sealed with another key (the app
  restarted, or a worker that did not inherit the key) is treated exactly like an expired one.

A ``state`` is consumed with ``DELETE … RETURNING`` in a write transaction, so only one process
can take it. Token refresh uses a lease column instead of a lock held across the network call:
the request that claims the lease (a conditional ``UPDATE``) refreshes and writes the new tokens;
others poll until they see them or the lease lapses (the holder died), then claim it themselves.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from cds_service.shared_state import SharedState
from cds_service.smart.sealing import Sealer
from cds_service.smart.sessions import (
    MAX_LAUNCHES_PER_SESSION,
    MAX_PENDING_PER_SESSION,
    MAX_PENDING_SESSIONS,
    MAX_SESSIONS,
    MAX_USED_STATES,
    PENDING_TTL,
    LaunchContext,
    PendingAuthorization,
    Refresh,
    StateRefusal,
    apply_refresh,
)

SCHEMA_PART: Final = "smart"
SCHEMA: Final = (
    # id: SHA-256 of the cookie; key_id: the key that sealed the session's secrets; signed_in: 1
    # once the session holds an authorised launch (0: pending, the pool anyone can fill).
    "CREATE TABLE smart_sessions (id BLOB PRIMARY KEY, key_id BLOB NOT NULL, "
    "last_seen REAL NOT NULL, signed_in INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE INDEX smart_sessions_last_seen ON smart_sessions (last_seen)",
    "CREATE INDEX smart_sessions_pool ON smart_sessions (signed_in, last_seen)",
    # seq orders rows by insertion, for the per-session maxima (oldest goes first).
    "CREATE TABLE smart_pending (seq INTEGER PRIMARY KEY, "
    "session BLOB NOT NULL REFERENCES smart_sessions (id) ON DELETE CASCADE, "
    "state BLOB NOT NULL, sealed BLOB NOT NULL, UNIQUE (session, state))",
    "CREATE TABLE smart_used_states (seq INTEGER PRIMARY KEY, "
    "session BLOB NOT NULL REFERENCES smart_sessions (id) ON DELETE CASCADE, "
    "state BLOB NOT NULL, UNIQUE (session, state))",
    "CREATE TABLE smart_launches (seq INTEGER PRIMARY KEY, "
    "session BLOB NOT NULL REFERENCES smart_sessions (id) ON DELETE CASCADE, "
    "ref TEXT NOT NULL, sealed BLOB NOT NULL, "
    "lease_owner BLOB, lease_until REAL NOT NULL DEFAULT 0, UNIQUE (session, ref))",
)

#: A session's last use is written at most this often (reads stay reads), so it may end up to
#: this much earlier than its idle period says.
TOUCH_INTERVAL: Final = timedelta(seconds=30)
#: How often a request waiting for another's token refresh looks again.
LEASE_POLL_SECONDS: Final = 0.05

_VISIBLE: Final = "id = :sid AND key_id = :key_id AND last_seen >= :alive_since"


class SharedSessionStore:
    """Browser sessions in :class:`~cds_service.shared_state.SharedState`; see the module doc.

    ``clock`` is the app's "now" (sessions, authorizations, token expiry); leases use
    ``lease_clock`` (wall time, the same in every process). ``lease_seconds`` must exceed the
    longest token request, or a slow refresh could be repeated with the same refresh token.
    """

    def __init__(
        self,
        shared: SharedState,
        sealer: Sealer,
        clock: Callable[[], datetime],
        idle: timedelta,
        lease_seconds: float = 15.0,
        lease_clock: Callable[[], float] = time.time,
        max_sessions: int = MAX_SESSIONS,
        max_pending_sessions: int = MAX_PENDING_SESSIONS,
    ) -> None:
        self._shared = shared
        self._max_sessions = max_sessions
        self._max_pending = max_pending_sessions
        self._sealer = sealer
        self._clock = clock
        self._idle = idle.total_seconds()
        self._touch = min(TOUCH_INTERVAL.total_seconds(), self._idle / 10)
        self._lease = lease_seconds
        self._lease_clock = lease_clock
        shared.ensure_schema(SCHEMA_PART, SCHEMA)

    # -- sessions --------------------------------------------------------------------------------

    def open(self, cookie: str | None) -> tuple[str, bool]:
        """The session for ``cookie``, or a new one: ``(cookie value, created)``.

        An unknown, expired or unreadable cookie value is never adopted (no session fixation):
        a fresh random one replaces it.
        """
        now = self._now()
        if cookie and self._visible(_key(cookie), now):
            return cookie, False
        value = secrets.token_urlsafe(32)
        sid = _key(value)
        with self._shared.write() as conn:
            conn.execute("DELETE FROM smart_sessions WHERE last_seen < ?", (now - self._idle,))
            conn.execute(
                "INSERT INTO smart_sessions (id, key_id, last_seen, signed_in) VALUES (?, ?, ?, 0)",
                (sid, self._sealer.key_id, now),
            )
            _keep_pool(conn, signed_in=False, keep=self._max_pending, sid=sid)
        return value, True

    def exists(self, cookie: str | None) -> bool:
        if not cookie:
            return False
        row = self._conn().execute(
            f"SELECT 1 FROM smart_sessions WHERE {_VISIBLE}", self._where(_key(cookie))
        )
        return row.fetchone() is not None

    # -- authorization requests ------------------------------------------------------------------

    def add_pending(self, cookie: str, pending: PendingAuthorization) -> None:
        sid, state = _key(cookie), _digest(pending.state)
        sealed = self._sealer.seal(_pending_json(pending), b"pending\0" + sid + state)
        with self._shared.write() as conn:
            self._require_session(conn, sid)
            conn.execute(
                "INSERT OR REPLACE INTO smart_pending (session, state, sealed) VALUES (?, ?, ?)",
                (sid, state, sealed),
            )
            _keep_newest(conn, "smart_pending", sid, MAX_PENDING_PER_SESSION)

    def take_pending(self, cookie: str | None, state: str) -> PendingAuthorization | StateRefusal:
        """Consume ``state`` (single use, in whichever process): the request, or why refused."""
        if not cookie:
            return "no-session"
        now = self._now()
        sid, digest = _key(cookie), _digest(state)
        with self._shared.write() as conn:
            seen = conn.execute(
                f"SELECT last_seen FROM smart_sessions WHERE {_VISIBLE}", self._where(sid, now)
            ).fetchone()
            if seen is None:
                return "no-session"
            conn.execute("UPDATE smart_sessions SET last_seen = ? WHERE id = ?", (now, sid))
            taken = conn.execute(
                "DELETE FROM smart_pending WHERE session = ? AND state = ? RETURNING sealed",
                (sid, digest),
            ).fetchone()
            if taken is None:
                used = conn.execute(
                    "SELECT 1 FROM smart_used_states WHERE session = ? AND state = ?",
                    (sid, digest),
                ).fetchone()
                return "used" if used else "unknown"
            conn.execute(
                "INSERT OR IGNORE INTO smart_used_states (session, state) VALUES (?, ?)",
                (sid, digest),
            )
            _keep_newest(conn, "smart_used_states", sid, MAX_USED_STATES)
        opened = self._sealer.open(taken[0], b"pending\0" + sid + digest)
        pending = _pending_from(state, opened) if opened is not None else None
        if pending is None or self._clock() - pending.created > PENDING_TTL:
            return "expired"
        return pending

    # -- launches --------------------------------------------------------------------------------

    def add_launch(self, cookie: str, launch: LaunchContext) -> None:
        sid = _key(cookie)
        sealed = self._sealer.seal(_launch_json(launch), _launch_bound(sid, launch.ref))
        with self._shared.write() as conn:
            self._require_session(conn, sid)
            self._insert_launch(conn, sid, launch.ref, sealed)

    def sign_in(self, cookie: str | None, launch: LaunchContext) -> str | None:
        """See :meth:`~cds_service.smart.sessions.Sessions.sign_in`: one write transaction."""
        if not cookie:
            return None
        now = self._now()
        old = _key(cookie)
        value = secrets.token_urlsafe(32)
        sid = _key(value)
        sealer = self._sealer
        with self._shared.write() as conn:
            if (
                conn.execute(
                    f"SELECT 1 FROM smart_sessions WHERE {_VISIBLE}", self._where(old, now)
                ).fetchone()
                is None
            ):
                return None
            conn.execute(
                "INSERT INTO smart_sessions (id, key_id, last_seen, signed_in) VALUES (?, ?, ?, 1)",
                (sid, sealer.key_id, now),
            )
            # What the old id held moves to the new one, re-sealed for its new row (each sealed
            # value is bound to its session); then the old id goes, its rows with it.
            for state, sealed in conn.execute(
                "SELECT state, sealed FROM smart_pending WHERE session = ? ORDER BY seq", (old,)
            ).fetchall():
                opened = sealer.open(sealed, b"pending\0" + old + state)
                if opened is not None:
                    conn.execute(
                        "INSERT INTO smart_pending (session, state, sealed) VALUES (?, ?, ?)",
                        (sid, state, sealer.seal(opened, b"pending\0" + sid + state)),
                    )
            conn.execute(
                "INSERT INTO smart_used_states (session, state) "
                "SELECT ?, state FROM smart_used_states WHERE session = ? ORDER BY seq",
                (sid, old),
            )
            for ref, sealed, lease_owner, lease_until in conn.execute(
                "SELECT ref, sealed, lease_owner, lease_until FROM smart_launches "
                "WHERE session = ? ORDER BY seq",
                (old,),
            ).fetchall():
                opened = sealer.open(sealed, _launch_bound(old, ref))
                if opened is not None:
                    conn.execute(
                        "INSERT INTO smart_launches (session, ref, sealed, lease_owner, "
                        "lease_until) VALUES (?, ?, ?, ?, ?)",
                        (
                            sid,
                            ref,
                            sealer.seal(opened, _launch_bound(sid, ref)),
                            lease_owner,
                            lease_until,
                        ),
                    )
            conn.execute("DELETE FROM smart_sessions WHERE id = ?", (old,))
            sealed = sealer.seal(_launch_json(launch), _launch_bound(sid, launch.ref))
            self._insert_launch(conn, sid, launch.ref, sealed)
        return value

    def launch(self, cookie: str | None, ref: str) -> LaunchContext | None:
        """The launch ``ref`` if it belongs to this browser session (else None)."""
        if not cookie:
            return None
        return self._read_launch(_key(cookie), ref, self._now())

    def drop_launch(self, cookie: str | None, ref: str) -> None:
        if cookie:
            self._conn().execute(
                "DELETE FROM smart_launches WHERE session = ? AND ref = ?", (_key(cookie), ref)
            )

    def refresh_launch(
        self, cookie: str | None, ref: str, stale: str, refresh: Refresh
    ) -> LaunchContext | None:
        """See :meth:`~cds_service.smart.sessions.Sessions.refresh_launch`: once across processes.

        No SQLite lock is held during ``refresh`` (a network call): the lease is a column.
        """
        if not cookie:
            return None
        sid, owner = _key(cookie), secrets.token_bytes(16)
        give_up = self._lease_clock() + self._lease + 1.0
        while True:
            context = self._read_launch(sid, ref, self._now())
            if context is None or context.access_token != stale:
                return context
            if not context.refresh_token:
                return None
            if self._claim(sid, ref, owner):
                break
            if self._lease_clock() > give_up:
                return None  # held by others for a whole lease and more: give up
            time.sleep(LEASE_POLL_SECONDS)
        try:
            # Read again under the lease: another request may have refreshed since our read.
            context = self._read_launch(sid, ref, self._now())
            if context is None or context.access_token != stale:
                return context
            if not context.refresh_token:
                return None
            try:
                tokens = refresh(context.refresh_token)
            except BaseException:
                context.refresh_token = None  # never reuse a refresh token that failed
                self._store_tokens(sid, context, owner)
                raise
            apply_refresh(context, tokens)
            # If the lease lapsed meanwhile this write is skipped: the new tokens serve this
            # request only, and the next refresh fails cleanly (session expired).
            self._store_tokens(sid, context, owner)
            return context
        finally:
            self._conn().execute(
                "UPDATE smart_launches SET lease_owner = NULL, lease_until = 0 "
                "WHERE session = ? AND ref = ? AND lease_owner = ?",
                (sid, ref, owner),
            )

    # -- internals -------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        return self._shared.connection()

    def _now(self) -> float:
        return self._clock().timestamp()

    def _where(self, sid: bytes, now: float | None = None) -> dict[str, Any]:
        now = self._now() if now is None else now
        return {"sid": sid, "key_id": self._sealer.key_id, "alive_since": now - self._idle}

    def _visible(self, sid: bytes, now: float) -> bool:
        """Whether the session is alive and readable; marks it used (at most every few seconds)."""
        conn = self._conn()
        row = conn.execute(
            f"SELECT last_seen FROM smart_sessions WHERE {_VISIBLE}", self._where(sid, now)
        ).fetchone()
        if row is None:
            return False
        if now - row[0] >= self._touch:
            conn.execute("UPDATE smart_sessions SET last_seen = ? WHERE id = ?", (now, sid))
        return True

    def _insert_launch(self, conn: sqlite3.Connection, sid: bytes, ref: str, sealed: bytes) -> None:
        """Add a sealed launch to the session, which is then signed in (in ``conn``'s write)."""
        conn.execute(
            "INSERT OR REPLACE INTO smart_launches (session, ref, sealed) VALUES (?, ?, ?)",
            (sid, ref, sealed),
        )
        _keep_newest(conn, "smart_launches", sid, MAX_LAUNCHES_PER_SESSION)
        conn.execute(
            "UPDATE smart_sessions SET signed_in = 1 WHERE id = ? AND signed_in = 0", (sid,)
        )
        _keep_pool(conn, signed_in=True, keep=self._max_sessions, sid=sid)

    def _require_session(self, conn: sqlite3.Connection, sid: bytes) -> None:
        row = conn.execute(
            "SELECT 1 FROM smart_sessions WHERE id = ? AND key_id = ?", (sid, self._sealer.key_id)
        ).fetchone()
        if row is None:
            raise KeyError("no such session")  # as the in-memory store: open() comes first

    def _read_launch(self, sid: bytes, ref: str, now: float) -> LaunchContext | None:
        conn = self._conn()
        row = conn.execute(
            "SELECT s.last_seen, l.sealed FROM smart_sessions AS s LEFT JOIN smart_launches AS l "
            "ON l.session = s.id AND l.ref = :ref "
            "WHERE s.id = :sid AND s.key_id = :key_id AND s.last_seen >= :alive_since",
            {**self._where(sid, now), "ref": ref},
        ).fetchone()
        if row is None:
            return None
        last_seen, sealed = row
        if now - last_seen >= self._touch:
            conn.execute("UPDATE smart_sessions SET last_seen = ? WHERE id = ?", (now, sid))
        if sealed is None:
            return None
        opened = self._sealer.open(sealed, _launch_bound(sid, ref))
        return _launch_from(ref, opened) if opened is not None else None

    def _claim(self, sid: bytes, ref: str, owner: bytes) -> bool:
        t = self._lease_clock()
        claimed = self._conn().execute(
            "UPDATE smart_launches SET lease_owner = ?, lease_until = ? "
            "WHERE session = ? AND ref = ? AND lease_until <= ?",
            (owner, t + self._lease, sid, ref, t),
        )
        return claimed.rowcount == 1

    def _store_tokens(self, sid: bytes, context: LaunchContext, owner: bytes) -> None:
        sealed = self._sealer.seal(_launch_json(context), _launch_bound(sid, context.ref))
        self._conn().execute(
            "UPDATE smart_launches SET sealed = ? WHERE session = ? AND ref = ? AND lease_owner = ?",
            (sealed, sid, context.ref, owner),
        )


def _keep_newest(conn: sqlite3.Connection, table: str, sid: bytes, keep: int) -> None:
    """Drop all but the ``keep`` newest rows of the session in ``table`` (one of ours)."""
    conn.execute(
        f"DELETE FROM {table} WHERE session = ?1 AND seq NOT IN "
        f"(SELECT seq FROM {table} WHERE session = ?1 ORDER BY seq DESC LIMIT ?2)",
        (sid, keep),
    )


def _keep_pool(conn: sqlite3.Connection, *, signed_in: bool, keep: int, sid: bytes) -> None:
    """Evict the least recently used sessions of one pool beyond ``keep``, never ``sid``: the
    pending pool and the signed-in pool are bounded apart, so filling one leaves the other."""
    flag = 1 if signed_in else 0
    (count,) = conn.execute(
        "SELECT count(*) FROM smart_sessions WHERE signed_in = ?", (flag,)
    ).fetchone()
    if count > keep:
        conn.execute(
            "DELETE FROM smart_sessions WHERE id IN (SELECT id FROM smart_sessions "
            "WHERE signed_in = ? AND id != ? ORDER BY last_seen LIMIT ?)",
            (flag, sid, count - keep),
        )


def _key(cookie: str) -> bytes:
    """Sessions are stored under a hash of the cookie, never the cookie itself."""
    return _digest(cookie)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "replace")).digest()


def _launch_bound(sid: bytes, ref: str) -> bytes:
    return b"launch\0" + sid + ref.encode("utf-8", "replace")


# -- sealed records ----------------------------------------------------------------------------------


def _pending_json(pending: PendingAuthorization) -> dict[str, Any]:
    return {
        "code_verifier": pending.code_verifier,
        "fhir_base": pending.fhir_base,
        "token_endpoint": pending.token_endpoint,
        "redirect_uri": pending.redirect_uri,
        "standalone": pending.standalone,
        "created": pending.created.isoformat(),
    }


def _pending_from(state: str, data: dict[str, Any]) -> PendingAuthorization | None:
    try:
        return PendingAuthorization(
            state=state,
            code_verifier=str(data["code_verifier"]),
            fhir_base=str(data["fhir_base"]),
            token_endpoint=str(data["token_endpoint"]),
            redirect_uri=str(data["redirect_uri"]),
            standalone=bool(data["standalone"]),
            created=datetime.fromisoformat(data["created"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _launch_json(launch: LaunchContext) -> dict[str, Any]:
    return {
        "fhir_base": launch.fhir_base,
        "token_endpoint": launch.token_endpoint,
        "access_token": launch.access_token,
        "token_type": launch.token_type,
        "expires_at": launch.expires_at.isoformat() if launch.expires_at else None,
        "refresh_token": launch.refresh_token,
        "scope": list(launch.scope),
        "patient_id": launch.patient_id,
        "encounter_id": launch.encounter_id,
        "need_patient_banner": launch.need_patient_banner,
        "app_context": launch.app_context,
        "fhir_context": list(launch.fhir_context),
        "standalone": launch.standalone,
        "created": launch.created.isoformat(),
    }


def _launch_from(ref: str, data: dict[str, Any]) -> LaunchContext | None:
    try:
        expires_at = data["expires_at"]
        return LaunchContext(
            ref=ref,
            fhir_base=str(data["fhir_base"]),
            token_endpoint=str(data["token_endpoint"]),
            access_token=str(data["access_token"]),
            token_type=str(data["token_type"]),
            expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
            refresh_token=data["refresh_token"],
            scope=tuple(data["scope"]),
            patient_id=str(data["patient_id"]),
            encounter_id=data["encounter_id"],
            need_patient_banner=bool(data["need_patient_banner"]),
            app_context=data["app_context"],
            fhir_context=tuple(data["fhir_context"]),
            standalone=bool(data["standalone"]),
            created=datetime.fromisoformat(data["created"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


__all__ = ["SharedSessionStore"]
