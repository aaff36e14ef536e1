"""Server-side SMART sessions: what a browser may use, keyed by an opaque random cookie.

The cookie holds only a random 256-bit id; tokens, PKCE verifiers, ``state`` values and the launch
context stay in this process. One browser session holds the authorizations it started (``state`` →
verifier, single use, ten minutes) and the launches it completed (a random reference → token and
context), so two tabs with two patients do not mix. Sessions end after an idle period.

The store is in memory, per process: run the app in one worker process (threads are fine), or
behind sticky sessions, or replace :class:`SessionStore` with a shared one offering the same methods.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

#: How long an authorization request may take (the EHR's login included).
PENDING_TTL = timedelta(minutes=10)
#: Bounds that keep one browser, or many, from growing the store without limit.
MAX_PENDING_PER_SESSION = 16
MAX_LAUNCHES_PER_SESSION = 16
MAX_SESSIONS = 10_000
#: Used ``state`` values remembered per session, to say "already used" rather than "unknown".
MAX_USED_STATES = 32


#: Why a ``state`` was refused: no session cookie, never issued to this session, already used, stale.
StateRefusal = Literal["no-session", "unknown", "used", "expired"]


@dataclass(frozen=True, slots=True)
class PendingAuthorization:
    """An authorization request in flight: everything the callback needs, bound to one session."""

    state: str
    code_verifier: str
    fhir_base: str
    token_endpoint: str
    redirect_uri: str
    standalone: bool
    created: datetime


@dataclass(slots=True)
class LaunchContext:
    """A completed launch: the token (server-side only) and the SMART context for one patient."""

    ref: str
    fhir_base: str
    token_endpoint: str
    access_token: str
    token_type: str
    expires_at: datetime | None
    refresh_token: str | None
    scope: tuple[str, ...]
    patient_id: str
    encounter_id: str | None
    need_patient_banner: bool
    app_context: str | None
    fhir_context: tuple[str, ...]
    standalone: bool
    created: datetime
    #: Serialises token refreshes of this launch (a refresh token is used only once).
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


@dataclass(slots=True)
class BrowserSession:
    pending: OrderedDict[str, PendingAuthorization] = field(default_factory=OrderedDict)
    used_states: OrderedDict[str, None] = field(default_factory=OrderedDict)
    launches: OrderedDict[str, LaunchContext] = field(default_factory=OrderedDict)
    last_seen: datetime | None = None


class SessionStore:
    """Thread-safe in-memory sessions with idle expiry; every read is bounded in time and size."""

    def __init__(self, clock: Callable[[], datetime], idle: timedelta) -> None:
        self._clock = clock
        self._idle = idle
        self._sessions: OrderedDict[str, BrowserSession] = OrderedDict()
        self._lock = threading.Lock()

    # -- sessions --------------------------------------------------------------------------------

    def open(self, cookie: str | None) -> tuple[str, bool]:
        """The session for ``cookie``, or a new one: ``(cookie value, created)``.

        An unknown or expired cookie value is never adopted (no session fixation): a fresh random
        one replaces it.
        """
        now = self._clock()
        with self._lock:
            self._expire(now)
            if cookie and (session := self._sessions.get(_key(cookie))) is not None:
                session.last_seen = now
                self._sessions.move_to_end(_key(cookie))
                return cookie, False
            value = secrets.token_urlsafe(32)
            self._sessions[_key(value)] = BrowserSession(last_seen=now)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
            return value, True

    def exists(self, cookie: str | None) -> bool:
        with self._lock:
            self._expire(self._clock())
            return bool(cookie) and _key(cookie or "") in self._sessions

    # -- authorization requests ------------------------------------------------------------------

    def add_pending(self, cookie: str, pending: PendingAuthorization) -> None:
        with self._lock:
            session = self._sessions[_key(cookie)]
            session.pending[pending.state] = pending
            while len(session.pending) > MAX_PENDING_PER_SESSION:
                session.pending.popitem(last=False)

    def take_pending(self, cookie: str | None, state: str) -> PendingAuthorization | StateRefusal:
        """Consume ``state`` (single use): the pending request, or why it is refused."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            session = self._sessions.get(_key(cookie)) if cookie else None
            if session is None:
                return "no-session"
            session.last_seen = now
            pending = session.pending.pop(state, None)
            if pending is None:
                return "used" if state in session.used_states else "unknown"
            session.used_states[state] = None
            while len(session.used_states) > MAX_USED_STATES:
                session.used_states.popitem(last=False)
            if now - pending.created > PENDING_TTL:
                return "expired"
            return pending

    # -- launches --------------------------------------------------------------------------------

    def add_launch(self, cookie: str, launch: LaunchContext) -> None:
        with self._lock:
            session = self._sessions[_key(cookie)]
            session.launches[launch.ref] = launch
            while len(session.launches) > MAX_LAUNCHES_PER_SESSION:
                session.launches.popitem(last=False)

    def launch(self, cookie: str | None, ref: str) -> LaunchContext | None:
        """The launch ``ref`` if it belongs to this browser session (else None)."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            session = self._sessions.get(_key(cookie)) if cookie else None
            if session is None:
                return None
            session.last_seen = now
            return session.launches.get(ref)

    def drop_launch(self, cookie: str | None, ref: str) -> None:
        with self._lock:
            session = self._sessions.get(_key(cookie)) if cookie else None
            if session is not None:
                session.launches.pop(ref, None)

    # -- internals -------------------------------------------------------------------------------

    def _expire(self, now: datetime) -> None:
        """Drop sessions idle for too long (oldest first: the dict is kept in last-use order)."""
        while self._sessions:
            key, session = next(iter(self._sessions.items()))
            if session.last_seen is not None and now - session.last_seen <= self._idle:
                break
            del self._sessions[key]


def new_ref() -> str:
    """An unguessable reference (128 bits) for a launch or a ``state`` value."""
    return secrets.token_urlsafe(16)


def _key(cookie: str) -> str:
    """Sessions are stored under a hash of the cookie, so the store never holds the cookie itself."""
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()
