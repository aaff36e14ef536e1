"""The JWT replay cache, shared by all worker processes of one instance (in the shared-state file).

A token replayed to a sibling worker must be refused like one replayed to the same worker, so the
seen ``(iss, jti)`` pairs live in :class:`~cds_service.shared_state.SharedState`, as a SHA-256 of
the pair (the raw values are never stored) with the time until which the pair must be refused.

An accepted token costs one statement: ``INSERT OR IGNORE`` inserts the pair only while fewer than
``max_entries`` pairs are stored (a trigger-maintained count, so the bound costs no scan), and the
row count says whether it was new. Only a refusal, which is rare, looks further: a live pair is a
replay; otherwise expired pairs are pruned and the insert retried, and if there is still no room
the cache is full and new tokens are refused (fail closed) rather than letting a flood of
valid-but-unique tokens grow the file without bound (at the default of 100 000 that takes a client
minting more than 27 tokens per second for an hour). Expired pairs are also pruned every
``prune_every`` inserts of a process, not on every request.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from typing import Final

from cds_service.security import AuthenticationError, quoted
from cds_service.shared_state import SharedState

SCHEMA_PART: Final = "replay"
SCHEMA: Final = (
    "CREATE TABLE replay_seen (pair BLOB PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX replay_seen_until ON replay_seen (until)",
    "CREATE TABLE replay_size (n INTEGER NOT NULL)",
    "INSERT INTO replay_size (n) VALUES (0)",
    "CREATE TRIGGER replay_added AFTER INSERT ON replay_seen "
    "BEGIN UPDATE replay_size SET n = n + 1; END",
    "CREATE TRIGGER replay_removed AFTER DELETE ON replay_seen "
    "BEGIN UPDATE replay_size SET n = n - 1; END",
)

_INSERT: Final = (
    "INSERT OR IGNORE INTO replay_seen (pair, until) "
    "SELECT ?1, ?2 WHERE (SELECT n FROM replay_size) < ?3"
)
_LIVE: Final = "SELECT 1 FROM replay_seen WHERE pair = ? AND until > ?"
_PRUNE: Final = "DELETE FROM replay_seen WHERE until <= ?"

#: Why a new token is refused when the cache holds ``max_entries`` live pairs.
REPLAY_CACHE_FULL: Final = "replay cache full; refusing new tokens"


class SharedReplayCache:
    """Seen ``(iss, jti)`` pairs shared by processes, each kept until the token it came from can no
    longer pass (a :class:`~cds_service.security.ehr_auth.ReplayGuard`)."""

    def __init__(
        self,
        shared: SharedState,
        max_entries: int = 100_000,
        max_ttl_seconds: float = 3600.0,
        prune_every: int = 1000,
    ) -> None:
        self.max_entries = max_entries
        self.max_ttl_seconds = max_ttl_seconds
        self.prune_every = prune_every
        self._shared = shared
        self._inserts = itertools.count(1)
        shared.ensure_schema(SCHEMA_PART, SCHEMA)

    def __len__(self) -> int:
        """Stored pairs, expired ones not yet pruned included."""
        row = self._shared.connection().execute("SELECT n FROM replay_size").fetchone()
        return int(row[0]) if row else 0

    def check_and_remember(self, iss: str, jti: str, expires_at: float, now: float) -> None:
        """Record the pair until ``expires_at`` (capped at ``now + max_ttl_seconds``), or raise."""
        pair = _pair(iss, jti)
        until = min(expires_at, now + self.max_ttl_seconds)
        try:
            conn = self._shared.connection()
            if conn.execute(_INSERT, (pair, until, self.max_entries)).rowcount == 1:
                if next(self._inserts) % self.prune_every == 0:
                    self.prune(now)
                return
            if conn.execute(_LIVE, (pair, now)).fetchone() is not None:
                raise _replayed(iss, jti)
            # Full, or an expired entry for this very pair: make room and try once more.
            self.prune(now)
            if conn.execute(_INSERT, (pair, until, self.max_entries)).rowcount == 1:
                return
            if conn.execute(_LIVE, (pair, now)).fetchone() is not None:
                raise _replayed(iss, jti)  # another process accepted it meanwhile
        except sqlite3.Error as exc:
            # Fail closed: without the cache a replay cannot be told from a new token.
            raise AuthenticationError(f"replay cache unavailable ({type(exc).__name__})") from None
        raise AuthenticationError(REPLAY_CACHE_FULL)

    def prune(self, now: float) -> int:
        """Forget pairs whose tokens can no longer pass; how many were forgotten."""
        return self._shared.connection().execute(_PRUNE, (now,)).rowcount


def _replayed(iss: str, jti: str) -> AuthenticationError:
    return AuthenticationError(f"replayed jti {quoted(jti)} from iss {quoted(iss)}")


def _pair(iss: str, jti: str) -> bytes:
    """SHA-256 of the pair, length-prefixed so no two pairs share an encoding."""
    raw_iss = iss.encode("utf-8", "surrogatepass")
    raw_jti = jti.encode("utf-8", "surrogatepass")
    return hashlib.sha256(len(raw_iss).to_bytes(4, "big") + raw_iss + raw_jti).digest()


__all__ = ["REPLAY_CACHE_FULL", "SharedReplayCache"]
