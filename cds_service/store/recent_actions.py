"""Who acted on which card lately: the per-process index behind patient-view suppression.

clinical-presentation.md §4: after a clinician acted on a card (accepted or overridden) for the
same inputs, patient-view stays silent for ``alerting.suppress_after_feedback_days``. Asking the
store on every patient-view call cost ~100 µs in a loaded worker (the audit writer commits
concurrently), so the answer comes from memory: ``{(inputs_key, issuer, tenant): latest acted_at}``
with ``acted_at = min(outcome_at, received_at)`` (an action counts from the earlier of the EHR's
``outcomeTimestamp`` and our receipt, so an EHR clock running ahead cannot stretch the silence).

Freshness. The index is refreshed lazily on the request path (no thread), at most once per
``refresh_seconds`` (1 s) of the monotonic clock, by whichever request finds it due and gets the
lock without waiting; the others answer from the current data. A refresh reads only feedback rows
with an id above the highest seen (and received within the period); every ``full_reload_seconds``
(60 s) it reads the whole period again, which catches rows committed out of id order (concurrent
PostgreSQL writers) and ids SQLite reuses after a purge emptied the table. The worker that receives
feedback refreshes at once (:meth:`RecentActions.force_refresh`, called by the feedback endpoint);
**other workers and replicas see it within ``refresh_seconds``: a chart opened within a second of
the feedback on another worker may show the card once more.**

Memory is bounded by the feedback received within the period: one entry per distinct
(inputs key, issuer, tenant) acted on (a few hundred bytes each; 10,000 actions a month ≈ 4 MB),
entries older than the period are pruned on every refresh.

Failure. A refresh that fails (any exception) keeps the data read before, logs one WARNING naming
the exception class only (no patient data), and is not logged again until a refresh succeeds. A
card is never hidden because of a store error: with no data for its key it is shown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from cds_service.store.database import FeedbackAction

log = logging.getLogger(__name__)

#: (inputs_key, issuer, tenant), issuer and tenant as the store keeps them (255 characters).
ActionKey = tuple[str, str | None, str | None]


class FeedbackSource(Protocol):
    """What the index reads (:class:`~cds_service.store.database.Store` provides it)."""

    def feedback_actions(
        self, after_id: int, received_since: datetime | None = None
    ) -> list[FeedbackAction]: ...


def _clip(value: str | None) -> str | None:
    """Issuer and tenant as :meth:`Store.save_feedback` stores them."""
    return value[:255] if value else None


class RecentActions:
    """``acted_on_since(...)``: a dict lookup after an occasional refresh from the store.

    Thread-safe: readers never take the lock (the dict is replaced, never changed in place);
    refreshes are serialised by a lock that request threads only try.
    """

    def __init__(
        self,
        store: FeedbackSource,
        *,
        period_days: float,
        refresh_seconds: float = 1.0,
        full_reload_seconds: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._period = timedelta(days=max(period_days, 0.0))
        #: False when suppression is off (period 0): nothing is ever read, nothing is silenced.
        self.enabled = period_days > 0
        self._refresh_seconds = refresh_seconds
        self._full_reload_seconds = full_reload_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._latest: dict[ActionKey, datetime] = {}
        self._oldest: datetime | None = None  # earliest acted_at held (prune only when needed)
        self._last_id = 0
        self._last_attempt: float | None = None
        self._last_full: float | None = None
        self._failing = False

    def acted_on_since(
        self,
        inputs_key: str,
        since: datetime,
        *,
        issuer: str | None,
        tenant: str | None,
        now: datetime,
    ) -> bool:
        """Did a clinician act on a card with these inputs, for this EHR and tenant, since ``since``?

        ``now`` is the assessment's "now" (the period is counted back from it when loading and
        pruning); the refresh cadence follows the monotonic clock. Never raises for the store.
        """
        if not self.enabled:
            return False
        self.refresh_if_due(now)
        acted = self._latest.get((inputs_key, _clip(issuer), _clip(tenant)))
        return acted is not None and acted >= since

    def refresh_if_due(self, now: datetime) -> None:
        """Refresh when more than ``refresh_seconds`` have passed and no other thread is at it."""
        if not self.enabled or not self._due():
            return
        if not self._lock.acquire(blocking=False):
            return  # another request is refreshing: answer from the current data
        try:
            if self._due():  # it may have just been done by the thread that held the lock
                self._refresh(now)
        finally:
            self._lock.release()

    def force_refresh(self, now: datetime) -> None:
        """Read new feedback now (after :meth:`Store.save_feedback`), so this worker silences the
        next patient-view at once. Waits for a refresh in progress, whose read may predate the
        feedback just stored. Never raises for the store."""
        if not self.enabled:
            return
        with self._lock:
            self._refresh(now)

    def _due(self) -> bool:
        last = self._last_attempt
        return last is None or self._monotonic() - last > self._refresh_seconds

    def _refresh(self, now: datetime) -> None:
        started = self._monotonic()
        self._last_attempt = started  # a failing store is retried at most once per interval too
        horizon = now - self._period
        full = self._last_full is None or started - self._last_full >= self._full_reload_seconds
        try:
            rows = self._store.feedback_actions(0 if full else self._last_id, horizon)
        except Exception as exc:  # any failure: keep what we had, never hide a card for it
            if not self._failing:
                self._failing = True
                log.warning(
                    "feedback suppression check failed, card shown unless feedback read "
                    "before silences it: %s",
                    type(exc).__name__,
                )
            return
        if self._failing:
            self._failing = False
            log.info("feedback suppression check reads the store again")
        self._merge(rows, horizon, full)
        if full:
            self._last_full = started

    def _merge(self, rows: list[FeedbackAction], horizon: datetime, full: bool) -> None:
        if not rows and not full and (self._oldest is None or self._oldest >= horizon):
            return  # nothing new, nothing to prune: keep the same dict
        latest = {} if full else {k: v for k, v in self._latest.items() if v >= horizon}
        last_id = self._last_id
        for row_id, key, issuer, tenant, acted_at in rows:
            last_id = max(last_id, row_id)
            if acted_at < horizon:
                continue
            action = (key, issuer, tenant)
            known = latest.get(action)
            if known is None or acted_at > known:
                latest[action] = acted_at
        self._oldest = min(latest.values(), default=None)
        self._latest = latest  # one reference swap: readers see the old or the new dict
        self._last_id = last_id

    def __len__(self) -> int:
        return len(self._latest)
