"""SMART sessions in the store's database, so every worker and every replica serves them.

Same behaviour and bounds as the in-memory :class:`~cds_service.smart.sessions.SessionStore`: idle
expiry, at most ``max_sessions`` signed-in sessions and ``max_pending_sessions`` pending ones, each
pool evicting its own least recently used (``signed_in`` tells them apart), per-session maxima of
pending authorizations, launches and remembered used ``state`` values, pending authorizations
valid for ``PENDING_TTL`` and usable once, a cookie value never adopted unless this store issued
it, and a new id at sign-in (the session's rows move to it, re-sealed for it, in one write
transaction; the old id is deleted). The tables are the store's (:mod:`cds_service.store.schema`,
schema 5): the embedded SQLite file, or PostgreSQL shared by the replicas, so a launch begun on one
replica finishes on another without sticky sessions. What reaches the database:

* a session's id is the SHA-256 of its cookie, a ``state`` is stored as its SHA-256;
* PKCE verifiers, tokens and the launch context (patient id included) are sealed
  (:class:`~cds_service.smart.sealing.Sealer`), bound to their row; replicas share the key
  through ``SMART_SESSION_KEY`` (else each instance makes its own, which its workers inherit);
* each session records which key sealed its secrets: a session sealed with another key (the app
  restarted without a configured key, or a replica with another key) is treated exactly like an
  expired one.

A ``state`` is consumed with ``DELETE … RETURNING`` in a write transaction, so only one process
can take it (SQLite: one writer at a time; PostgreSQL: the row lock, and the session row is read
``FOR UPDATE``). Token refresh uses a lease column instead of a lock held across the network call:
the request that claims the lease (a conditional ``UPDATE``) refreshes and writes the new tokens;
others poll until they see them or the lease lapses (the holder died), then claim it themselves.
Leases compare wall-clock times of different hosts: keep the replicas' clocks synchronised (NTP).
Idle sessions are deleted on the store's purge schedule and when a new session is opened.
A database failure leaves every method as :class:`~cds_service.store.errors.StoreUnavailable`
(the app's pages answer it 503, try again); there is no in-memory fallback for sessions.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    LargeBinary,
    Table,
    and_,
    delete,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

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
from cds_service.store.errors import StoreUnavailable
from cds_service.store.schema import smart_launch, smart_pending, smart_session, smart_used_state
from cds_service.store.state import PurgeSchedule, StateDatabase

#: A session's last use is written at most this often (reads stay reads), so it may end up to
#: this much earlier than its idle period says.
TOUCH_INTERVAL: Final = timedelta(seconds=30)
#: How often a request waiting for another's token refresh looks again.
LEASE_POLL_SECONDS: Final = 0.05

S, P, U, L = smart_session.c, smart_pending.c, smart_used_state.c, smart_launch.c

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _store_unavailable_on_database_errors(
    method: Callable[Concatenate[SharedSessionStore, _P], _R],
) -> Callable[Concatenate[SharedSessionStore, _P], _R]:
    """A database failure leaves as :class:`StoreUnavailable` naming the exception class only (a
    driver's message may quote values), which the app's pages answer 503 "try again"."""

    @functools.wraps(method)
    def wrapper(self: SharedSessionStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"SMART sessions: {type(exc).__name__}") from exc

    return wrapper


class SharedSessionStore:
    """Browser sessions in the store's database; see the module doc.

    ``clock`` is the app's "now" (sessions, authorizations, token expiry); leases use
    ``lease_clock`` (wall time, the same in every process). ``lease_seconds`` must exceed the
    longest token request, or a slow refresh could be repeated with the same refresh token.
    """

    def __init__(
        self,
        state: StateDatabase,
        sealer: Sealer,
        clock: Callable[[], datetime],
        idle: timedelta,
        lease_seconds: float = 15.0,
        lease_clock: Callable[[], float] = time.time,
        max_sessions: int = MAX_SESSIONS,
        max_pending_sessions: int = MAX_PENDING_SESSIONS,
        schedule: PurgeSchedule | None = None,
    ) -> None:
        self._state = state
        self._max_sessions = max_sessions
        self._max_pending = max_pending_sessions
        self._sealer = sealer
        self._clock = clock
        self._idle = idle.total_seconds()
        self._touch = min(TOUCH_INTERVAL.total_seconds(), self._idle / 10)
        self._lease = lease_seconds
        self._lease_clock = lease_clock
        self._insert = postgresql.insert if state.backend == "postgresql" else sqlite.insert
        self._schedule = schedule
        if schedule is not None:
            schedule.add("SMART sessions", self.purge)

    # -- sessions --------------------------------------------------------------------------------

    @_store_unavailable_on_database_errors
    def open(self, cookie: str | None) -> tuple[str, bool]:
        """The session for ``cookie``, or a new one: ``(cookie value, created)``.

        An unknown, expired or unreadable cookie value is never adopted (no session fixation):
        a fresh random one replaces it.
        """
        if self._schedule is not None:
            self._schedule.ensure_running()
        now = self._now()
        if cookie and self._visible(_key(cookie), now):
            return cookie, False
        value = secrets.token_urlsafe(32)
        sid = _key(value)
        with self._state.write() as conn:
            conn.execute(delete(smart_session).where(S.last_seen < now - self._idle))
            conn.execute(
                smart_session.insert().values(
                    id=sid, key_id=self._sealer.key_id, last_seen=now, signed_in=False
                )
            )
            _keep_pool(conn, signed_in=False, keep=self._max_pending, sid=sid)
        return value, True

    @_store_unavailable_on_database_errors
    def exists(self, cookie: str | None) -> bool:
        if not cookie:
            return False
        with self._state.connect() as conn:
            row = conn.execute(select(literal(1)).where(self._alive(_key(cookie)))).first()
        return row is not None

    def purge(self, _now: float | None = None) -> int:
        """Delete the sessions idle for longer than the idle period (their rows go with them);
        how many. Run by the purge schedule, with the app's own clock (``last_seen`` is on it)."""
        with self._state.write() as conn:
            gone = conn.execute(delete(smart_session).where(S.last_seen < self._now() - self._idle))
        return int(gone.rowcount)

    # -- authorization requests ------------------------------------------------------------------

    @_store_unavailable_on_database_errors
    def add_pending(self, cookie: str, pending: PendingAuthorization) -> None:
        sid, state = _key(cookie), _digest(pending.state)
        sealed = self._sealer.seal(_pending_json(pending), b"pending\0" + sid + state)
        with self._state.write() as conn:
            self._require_session(conn, sid)
            # Replaced as the newest (delete, then insert): the per-session bound drops the oldest.
            conn.execute(delete(smart_pending).where(P.session == sid, P.state == state))
            conn.execute(smart_pending.insert().values(session=sid, state=state, sealed=sealed))
            _keep_newest(conn, smart_pending, sid, MAX_PENDING_PER_SESSION)

    @_store_unavailable_on_database_errors
    def take_pending(self, cookie: str | None, state: str) -> PendingAuthorization | StateRefusal:
        """Consume ``state`` (single use, in whichever process): the request, or why refused."""
        if not cookie:
            return "no-session"
        now = self._now()
        sid, digest = _key(cookie), _digest(state)
        with self._state.write() as conn:
            seen = conn.execute(
                select(S.last_seen).where(self._alive(sid, now)).with_for_update()
            ).first()
            if seen is None:
                return "no-session"
            conn.execute(update(smart_session).where(S.id == sid).values(last_seen=now))
            taken = conn.execute(
                delete(smart_pending).where(P.session == sid, P.state == digest).returning(P.sealed)
            ).first()
            if taken is None:
                used = conn.execute(
                    select(literal(1)).where(U.session == sid, U.state == digest)
                ).first()
                return "used" if used else "unknown"
            conn.execute(
                self._insert(smart_used_state)
                .values(session=sid, state=digest)
                .on_conflict_do_nothing(index_elements=[U.session, U.state])
            )
            _keep_newest(conn, smart_used_state, sid, MAX_USED_STATES)
        opened = self._sealer.open(taken[0], b"pending\0" + sid + digest)
        pending = _pending_from(state, opened) if opened is not None else None
        if pending is None or self._clock() - pending.created > PENDING_TTL:
            return "expired"
        return pending

    # -- launches --------------------------------------------------------------------------------

    @_store_unavailable_on_database_errors
    def add_launch(self, cookie: str, launch: LaunchContext) -> None:
        sid = _key(cookie)
        sealed = self._sealer.seal(_launch_json(launch), _launch_bound(sid, launch.ref))
        with self._state.write() as conn:
            self._require_session(conn, sid)
            self._insert_launch(conn, sid, launch.ref, sealed)

    @_store_unavailable_on_database_errors
    def sign_in(self, cookie: str | None, launch: LaunchContext) -> str | None:
        """See :meth:`~cds_service.smart.sessions.Sessions.sign_in`: one write transaction."""
        if not cookie:
            return None
        now = self._now()
        old = _key(cookie)
        value = secrets.token_urlsafe(32)
        sid = _key(value)
        sealer = self._sealer
        with self._state.write() as conn:
            alive = select(literal(1)).where(self._alive(old, now)).with_for_update()
            if conn.execute(alive).first() is None:
                return None
            conn.execute(
                smart_session.insert().values(
                    id=sid, key_id=sealer.key_id, last_seen=now, signed_in=True
                )
            )
            # What the old id held moves to the new one, re-sealed for its new row (each sealed
            # value is bound to its session); then the old id goes, its rows with it.
            for state, sealed in conn.execute(
                select(P.state, P.sealed).where(P.session == old).order_by(P.seq)
            ).all():
                opened = sealer.open(sealed, b"pending\0" + old + state)
                if opened is not None:
                    conn.execute(
                        smart_pending.insert().values(
                            session=sid,
                            state=state,
                            sealed=sealer.seal(opened, b"pending\0" + sid + state),
                        )
                    )
            conn.execute(
                smart_used_state.insert().from_select(
                    ["session", "state"],
                    select(literal(sid, LargeBinary), U.state)
                    .where(U.session == old)
                    .order_by(U.seq),
                )
            )
            for ref, sealed, lease_owner, lease_until in conn.execute(
                select(L.ref, L.sealed, L.lease_owner, L.lease_until)
                .where(L.session == old)
                .order_by(L.seq)
            ).all():
                opened = sealer.open(sealed, _launch_bound(old, ref))
                if opened is not None:
                    conn.execute(
                        smart_launch.insert().values(
                            session=sid,
                            ref=ref,
                            sealed=sealer.seal(opened, _launch_bound(sid, ref)),
                            lease_owner=lease_owner,
                            lease_until=lease_until,
                        )
                    )
            conn.execute(delete(smart_session).where(S.id == old))
            sealed = sealer.seal(_launch_json(launch), _launch_bound(sid, launch.ref))
            self._insert_launch(conn, sid, launch.ref, sealed)
        return value

    @_store_unavailable_on_database_errors
    def launch(self, cookie: str | None, ref: str) -> LaunchContext | None:
        """The launch ``ref`` if it belongs to this browser session (else None)."""
        if not cookie:
            return None
        return self._read_launch(_key(cookie), ref, self._now())

    @_store_unavailable_on_database_errors
    def drop_launch(self, cookie: str | None, ref: str) -> None:
        if cookie:
            with self._state.connect() as conn:
                conn.execute(delete(smart_launch).where(L.session == _key(cookie), L.ref == ref))

    @_store_unavailable_on_database_errors
    def refresh_launch(
        self, cookie: str | None, ref: str, stale: str, refresh: Refresh
    ) -> LaunchContext | None:
        """See :meth:`~cds_service.smart.sessions.Sessions.refresh_launch`: once across processes.

        No database lock is held during ``refresh`` (a network call): the lease is a column.
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
            with self._state.connect() as conn:
                conn.execute(
                    update(smart_launch)
                    .where(L.session == sid, L.ref == ref, L.lease_owner == owner)
                    .values(lease_owner=None, lease_until=0.0)
                )

    # -- internals -------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock().timestamp()

    def _alive(self, sid: bytes, now: float | None = None) -> ColumnElement[bool]:
        """The session row, if it is readable with this key and not idle for too long."""
        now = self._now() if now is None else now
        return and_(S.id == sid, S.key_id == self._sealer.key_id, S.last_seen >= now - self._idle)

    def _visible(self, sid: bytes, now: float) -> bool:
        """Whether the session is alive and readable; marks it used (at most every few seconds)."""
        with self._state.connect() as conn:
            row = conn.execute(select(S.last_seen).where(self._alive(sid, now))).first()
            if row is None:
                return False
            if now - row[0] >= self._touch:
                conn.execute(update(smart_session).where(S.id == sid).values(last_seen=now))
        return True

    def _insert_launch(self, conn: Connection, sid: bytes, ref: str, sealed: bytes) -> None:
        """Add a sealed launch to the session, which is then signed in (in ``conn``'s write)."""
        conn.execute(delete(smart_launch).where(L.session == sid, L.ref == ref))
        conn.execute(
            smart_launch.insert().values(session=sid, ref=ref, sealed=sealed, lease_until=0.0)
        )
        _keep_newest(conn, smart_launch, sid, MAX_LAUNCHES_PER_SESSION)
        conn.execute(
            update(smart_session).where(S.id == sid, S.signed_in.is_(False)).values(signed_in=True)
        )
        _keep_pool(conn, signed_in=True, keep=self._max_sessions, sid=sid)

    def _require_session(self, conn: Connection, sid: bytes) -> None:
        row = conn.execute(
            select(literal(1)).where(S.id == sid, S.key_id == self._sealer.key_id)
        ).first()
        if row is None:
            raise KeyError("no such session")  # as the in-memory store: open() comes first

    def _read_launch(self, sid: bytes, ref: str, now: float) -> LaunchContext | None:
        query = (
            select(S.last_seen, L.sealed)
            .select_from(
                smart_session.outerjoin(smart_launch, and_(L.session == S.id, L.ref == ref))
            )
            .where(self._alive(sid, now))
        )
        with self._state.connect() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            last_seen, sealed = row
            if now - last_seen >= self._touch:
                conn.execute(update(smart_session).where(S.id == sid).values(last_seen=now))
        if sealed is None:
            return None
        opened = self._sealer.open(sealed, _launch_bound(sid, ref))
        return _launch_from(ref, opened) if opened is not None else None

    def _claim(self, sid: bytes, ref: str, owner: bytes) -> bool:
        t = self._lease_clock()
        with self._state.connect() as conn:
            claimed = conn.execute(
                update(smart_launch)
                .where(L.session == sid, L.ref == ref, L.lease_until <= t)
                .values(lease_owner=owner, lease_until=t + self._lease)
            )
        return claimed.rowcount == 1

    def _store_tokens(self, sid: bytes, context: LaunchContext, owner: bytes) -> None:
        sealed = self._sealer.seal(_launch_json(context), _launch_bound(sid, context.ref))
        with self._state.connect() as conn:
            conn.execute(
                update(smart_launch)
                .where(L.session == sid, L.ref == context.ref, L.lease_owner == owner)
                .values(sealed=sealed)
            )


def _keep_newest(conn: Connection, table: Table, sid: bytes, keep: int) -> None:
    """Drop all but the ``keep`` newest rows of the session in ``table`` (one of ours)."""
    newest = (
        select(table.c.seq).where(table.c.session == sid).order_by(table.c.seq.desc()).limit(keep)
    )
    conn.execute(
        delete(table).where(table.c.session == sid, table.c.seq.not_in(newest.scalar_subquery()))
    )


def _keep_pool(conn: Connection, *, signed_in: bool, keep: int, sid: bytes) -> None:
    """Evict the least recently used sessions of one pool beyond ``keep``, never ``sid``: the
    pending pool and the signed-in pool are bounded apart, so filling one leaves the other."""
    pool = S.signed_in.is_(signed_in)
    count = conn.execute(select(func.count()).select_from(smart_session).where(pool)).scalar()
    if count is not None and count > keep:
        oldest = select(S.id).where(pool, S.id != sid).order_by(S.last_seen).limit(count - keep)
        conn.execute(delete(smart_session).where(S.id.in_(oldest.scalar_subquery())))


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
