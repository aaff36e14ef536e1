"""The replay cache's fallback while its database is away: pairs kept in this process's memory.

Issue 14, item 3: cards keep flowing during a database outage. While
:class:`~cds_service.store.replay_cache.ReplayCache` cannot reach its table, it remembers the pairs
it accepts here, so a token replayed to the same process is still refused. What this cannot do is
tell a replay to another process (a sibling worker, another replica) during the outage: that is the
price of answering at all, and it is why the fallback is logged (WARNING) and shown on ``/readyz``.
When the database answers again the pairs kept here are written to it before anything else, so
from then on every process refuses them too.

The memory is bounded (``max_entries``): when it is full of live pairs a new token cannot be
remembered, and the check answers "unavailable" (503), never a refusal of a valid token.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplayStatus:
    """Where the replay check of this process keeps its pairs now (for ``/readyz``)."""

    fallback: bool  # True while the database is away and pairs are kept in memory
    since: float | None  # POSIX time the fallback began
    entries: int  # pairs kept in memory
    full: bool  # no room for a new pair: new tokens get 503 (not ready)

    def to_json(self, now: float) -> dict[str, Any]:
        if not self.fallback:
            return {"store": "database"}
        assert self.since is not None
        return {
            "store": "memory",
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds"),
            "seconds": round(max(0.0, now - self.since), 1),
            "entries": self.entries,
            "full": self.full,
        }


class MemoryFallback:
    """Pairs accepted while the database is away, and the outage's bookkeeping (thread-safe)."""

    def __init__(
        self,
        max_entries: int,
        retry_seconds: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._pairs: dict[bytes, float] = {}
        self._since: float | None = None  # POSIX time the outage began
        self._retry_at = 0.0  # monotonic time of the next try of the database
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(me))

    @property
    def active(self) -> bool:
        return self._since is not None

    def skip_database(self) -> bool:
        """Whether to go straight to memory: in an outage, until the next retry is due (so a
        database that hangs costs one caller per ``retry_seconds``, not every call)."""
        return self._since is not None and self._monotonic() < self._retry_at

    def failed(self, exc: BaseException) -> None:
        """The database failed: begin (or continue) the outage; try it again after a while."""
        with self._lock:
            self._retry_at = self._monotonic() + self.retry_seconds
            if self._since is not None:
                return
            self._since = self._clock()
        log.warning(
            "replay cache database unavailable (%s): remembering accepted tokens in this "
            "process's memory until it answers; a replay to another process is not caught meanwhile",
            type(exc).__name__,
        )

    def remember(self, pair: bytes, until: float, now: float) -> bool | None:
        """Keep the pair: True if new, False if a live replay, None if there is no room."""
        with self._lock:
            seen = self._pairs.get(pair)
            if seen is not None and seen > now:
                return False
            if seen is None and len(self._pairs) >= self.max_entries:
                self._prune(now)
                if len(self._pairs) >= self.max_entries:
                    return None
            self._pairs[pair] = until
            return True

    def is_live(self, pair: bytes, now: float) -> bool:
        with self._lock:
            seen = self._pairs.get(pair)
        return seen is not None and seen > now

    def pending(self, now: float) -> dict[bytes, float]:
        """The live pairs to write to the database once it answers again."""
        with self._lock:
            self._prune(now)
            return dict(self._pairs)

    def recovered(self, written: dict[bytes, float]) -> None:
        """The database took ``written``: forget them, and end the outage if nothing is left."""
        with self._lock:
            for pair in written:
                self._pairs.pop(pair, None)
            since, ended = self._since, not self._pairs
            if ended:
                self._since = None
        if ended and since is not None:
            log.warning(
                "replay cache database available again after %.1f s; %d token(s) accepted "
                "meanwhile are now refused by every process",
                self._clock() - since,
                len(written),
            )

    def prune(self, now: float) -> int:
        with self._lock:
            return self._prune(now)

    def status(self, now: float) -> ReplayStatus:
        with self._lock:
            self._prune(now)
            return ReplayStatus(
                fallback=self._since is not None,
                since=self._since,
                entries=len(self._pairs),
                full=len(self._pairs) >= self.max_entries,
            )

    def _prune(self, now: float) -> int:
        expired = [pair for pair, until in self._pairs.items() if until <= now]
        for pair in expired:
            del self._pairs[pair]
        return len(expired)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # the parent may have held it at the fork


def _reset_in_child(ref: weakref.ref[MemoryFallback]) -> None:
    fallback = ref()
    if fallback is not None:
        fallback._after_fork_in_child()


__all__ = ["MemoryFallback", "ReplayStatus"]
