"""Server-side SMART sessions: what a browser may use, keyed by an opaque random cookie.

The cookie holds only a random 256-bit id; tokens, PKCE verifiers, ``state`` values and the launch
context stay on the server. One browser session holds the authorizations it started (``state`` →
verifier, single use, ten minutes) and the launches it completed (a random reference → token and
context), so two tabs with two patients do not mix. Sessions end after an idle period.

Two pools (issue 15, items 5 and 6):

- a session made by ``/smart/launch`` for a browser without one is **pending**: anyone can make one
  without credentials, so pending sessions live in a pool of their own
  (:data:`MAX_PENDING_SESSIONS`, least recently used evicted). A flood of anonymous launches evicts
  only other pending sessions (a clinician caught mid-login by one relaunches), never a clinician
  who is signed in;
- a session is **signed in** once it holds a launch the EHR authorised. Only :meth:`sign_in`, at
  the OAuth callback after the token exchange, makes one (and ``add_launch``, for library use).
  Signed-in sessions have their own bound (:data:`MAX_SESSIONS`), which only completed
  authorizations count against.

:meth:`Sessions.sign_in` also gives the browser a **new session id** (no session fixation): the
pending authorizations, used ``state`` values and launches move to a fresh random id and the id the
browser had before the callback stops working. A session id planted in a browser before the login
is therefore worth nothing after it.

:class:`Sessions` is what the app needs from a store. The app uses
:class:`~cds_service.smart.shared_sessions.SharedSessionStore`, in the store's database, which every
worker process and every replica on that database shares; :class:`SessionStore` here is the same in
the memory of one process (tests, library use).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol

#: How long an authorization request may take (the EHR's login included).
PENDING_TTL = timedelta(minutes=10)
#: Bounds that keep one browser, or many, from growing the store without limit.
MAX_PENDING_PER_SESSION = 16
MAX_LAUNCHES_PER_SESSION = 16
#: Signed-in sessions (LRU beyond it). Suggested setting: ``SMART_MAX_SESSIONS``.
MAX_SESSIONS = 10_000
#: Pending sessions (started a launch, no token yet), LRU beyond it, apart from the signed-in.
#: Suggested setting: ``SMART_MAX_PENDING_SESSIONS``.
MAX_PENDING_SESSIONS = 10_000
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
    #: Serialises token refreshes of this launch in :class:`SessionStore` (a refresh token is
    #: used only once); the shared store uses a lease instead.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class RefreshedTokens:
    """What a token refresh gave: the new access token and what came with it."""

    access_token: str
    expires_at: datetime | None
    refresh_token: str | None  # None: the server sent none, keep the old one
    scope: tuple[str, ...] | None  # None: the server did not say, keep the old one


#: Uses a refresh token (once) and returns the new tokens; raises when the refresh failed.
Refresh = Callable[[str], RefreshedTokens]


class Sessions(Protocol):
    """The session store the SMART views use (see the module docstring)."""

    def open(self, cookie: str | None) -> tuple[str, bool]:
        """The session for ``cookie``, or a new one: ``(cookie value, created)``."""
        ...

    def exists(self, cookie: str | None) -> bool: ...

    def add_pending(self, cookie: str, pending: PendingAuthorization) -> None: ...

    def take_pending(self, cookie: str | None, state: str) -> PendingAuthorization | StateRefusal:
        """Consume ``state`` (single use): the pending request, or why it is refused."""
        ...

    def add_launch(self, cookie: str, launch: LaunchContext) -> None:
        """Add a completed launch to the session, which is then signed in (keeps its id)."""
        ...

    def sign_in(self, cookie: str | None, launch: LaunchContext) -> str | None:
        """Add a completed launch and give the session a new id, returned for the cookie; the old
        id stops working at once. None when the session is gone (expired or evicted)."""
        ...

    def launch(self, cookie: str | None, ref: str) -> LaunchContext | None:
        """The launch ``ref`` if it belongs to this browser session (else None)."""
        ...

    def drop_launch(self, cookie: str | None, ref: str) -> None: ...

    def refresh_launch(
        self, cookie: str | None, ref: str, stale: str, refresh: Refresh
    ) -> LaunchContext | None:
        """The launch with a newer access token than ``stale``, or None if there is none to have.

        If the stored token is still ``stale``, ``refresh`` is called with the refresh token,
        once per expiry however many requests ask at the same moment: the others wait and get
        its result. When ``refresh`` raises, the refresh token is forgotten (never reused) and
        the exception propagates. None: the launch is gone, it has no refresh token, or another
        request's refresh did not finish in time.
        """
        ...


@dataclass(slots=True)
class BrowserSession:
    pending: OrderedDict[str, PendingAuthorization] = field(default_factory=OrderedDict)
    used_states: OrderedDict[str, None] = field(default_factory=OrderedDict)
    launches: OrderedDict[str, LaunchContext] = field(default_factory=OrderedDict)
    last_seen: datetime | None = None


class SessionStore:
    """Thread-safe in-memory sessions with idle expiry; every read is bounded in time and size.

    One process only: a sibling worker process would not see these sessions.
    """

    def __init__(
        self,
        clock: Callable[[], datetime],
        idle: timedelta,
        max_sessions: int = MAX_SESSIONS,
        max_pending_sessions: int = MAX_PENDING_SESSIONS,
    ) -> None:
        self._clock = clock
        self._idle = idle
        self._max_sessions = max_sessions
        self._max_pending = max_pending_sessions
        # Signed in, and pending: two pools, each in last-use order (see the module docstring).
        self._sessions: OrderedDict[str, BrowserSession] = OrderedDict()
        self._pending: OrderedDict[str, BrowserSession] = OrderedDict()
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
            if cookie and self._find(cookie, now) is not None:
                return cookie, False
            value = secrets.token_urlsafe(32)
            self._pending[_key(value)] = BrowserSession(last_seen=now)
            while len(self._pending) > self._max_pending:  # only pending sessions go
                self._pending.popitem(last=False)
            return value, True

    def exists(self, cookie: str | None) -> bool:
        with self._lock:
            self._expire(self._clock())
            key = _key(cookie or "")
            return bool(cookie) and (key in self._sessions or key in self._pending)

    # -- authorization requests ------------------------------------------------------------------

    def add_pending(self, cookie: str, pending: PendingAuthorization) -> None:
        with self._lock:
            session = self._find(cookie)
            if session is None:
                raise KeyError("no such session")
            session.pending[pending.state] = pending
            while len(session.pending) > MAX_PENDING_PER_SESSION:
                session.pending.popitem(last=False)

    def take_pending(self, cookie: str | None, state: str) -> PendingAuthorization | StateRefusal:
        """Consume ``state`` (single use): the pending request, or why it is refused."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            session = self._find(cookie, now)
            if session is None:
                return "no-session"
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
            key = _key(cookie)
            session = self._sessions.get(key) or self._pending.pop(key, None)
            if session is None:
                raise KeyError("no such session")
            self._signed_in(key, session, launch)

    def sign_in(self, cookie: str | None, launch: LaunchContext) -> str | None:
        now = self._clock()
        with self._lock:
            self._expire(now)
            if not cookie:
                return None
            key = _key(cookie)
            session = self._sessions.pop(key, None) or self._pending.pop(key, None)
            if session is None:
                return None
            session.last_seen = now
            value = secrets.token_urlsafe(32)  # the old id is gone with the pop above
            self._signed_in(_key(value), session, launch)
            return value

    def launch(self, cookie: str | None, ref: str) -> LaunchContext | None:
        """The launch ``ref`` if it belongs to this browser session (else None)."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            session = self._find(cookie, now)
            if session is None:
                return None
            return session.launches.get(ref)

    def drop_launch(self, cookie: str | None, ref: str) -> None:
        with self._lock:
            session = self._find(cookie)
            if session is not None:
                session.launches.pop(ref, None)

    def refresh_launch(
        self, cookie: str | None, ref: str, stale: str, refresh: Refresh
    ) -> LaunchContext | None:
        """See :meth:`Sessions.refresh_launch`; the launch's own lock serialises refreshes."""
        context = self.launch(cookie, ref)
        if context is None:
            return None
        with context.lock:
            if context.access_token != stale:
                return context  # refreshed by another request meanwhile
            if not context.refresh_token:
                return None
            try:
                tokens = refresh(context.refresh_token)
            except BaseException:
                context.refresh_token = None  # never reuse a refresh token that failed
                raise
            apply_refresh(context, tokens)
            return context

    # -- internals -------------------------------------------------------------------------------

    def _find(self, cookie: str | None, now: datetime | None = None) -> BrowserSession | None:
        """The session (either pool) for ``cookie``; with ``now``, marked as used then."""
        if not cookie:
            return None
        key = _key(cookie)
        for pool in (self._sessions, self._pending):
            session = pool.get(key)
            if session is not None:
                if now is not None:
                    session.last_seen = now
                    pool.move_to_end(key)
                return session
        return None

    def _signed_in(self, key: str, session: BrowserSession, launch: LaunchContext) -> None:
        """Put ``session`` with ``launch`` among the signed-in under ``key`` (lock held)."""
        session.launches[launch.ref] = launch
        while len(session.launches) > MAX_LAUNCHES_PER_SESSION:
            session.launches.popitem(last=False)
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    def _expire(self, now: datetime) -> None:
        """Drop sessions idle for too long (oldest first: each pool is kept in last-use order)."""
        for pool in (self._sessions, self._pending):
            while pool:
                key, session = next(iter(pool.items()))
                if session.last_seen is not None and now - session.last_seen <= self._idle:
                    break
                del pool[key]


def apply_refresh(context: LaunchContext, tokens: RefreshedTokens) -> None:
    """Put the refreshed tokens into ``context``, keeping what the server did not replace."""
    context.access_token = tokens.access_token
    context.expires_at = tokens.expires_at
    if tokens.refresh_token:
        context.refresh_token = tokens.refresh_token
    if tokens.scope is not None:
        context.scope = tokens.scope


def new_ref() -> str:
    """An unguessable reference (128 bits) for a launch or a ``state`` value."""
    return secrets.token_urlsafe(16)


def _key(cookie: str) -> str:
    """Sessions are stored under a hash of the cookie, so the store never holds the cookie itself."""
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()
