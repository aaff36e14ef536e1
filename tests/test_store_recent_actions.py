"""The in-memory index behind patient-view suppression (``RecentActions``), over a fake store:
incremental refresh, at most one refresh per interval, callers never blocked by a refresh, a
failing store keeps the old data and warns once, pruning, and the periodic full reload."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from cds_service.store import RecentActions, StoreUnavailable
from cds_service.store.database import FeedbackAction

T0 = datetime(2026, 5, 20, 8, 0, tzinfo=UTC)
EHR = "https://ehr.example.org"
DAY = timedelta(days=1)


@dataclass
class Monotonic:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeStore:
    """Feedback rows as ``Store.feedback_actions`` returns them, and the calls made."""

    rows: list[FeedbackAction] = field(default_factory=list)
    calls: list[tuple[int, datetime | None]] = field(default_factory=list)
    error: Exception | None = None

    def add(
        self,
        key: str,
        acted_at: datetime,
        issuer: str | None = EHR,
        tenant: str | None = "t1",
    ) -> None:
        self.rows.append((len(self.rows) + 1, key, issuer, tenant, acted_at))

    def feedback_actions(
        self, after_id: int, received_since: datetime | None = None
    ) -> list[FeedbackAction]:
        self.calls.append((after_id, received_since))
        if self.error is not None:
            raise self.error
        # The fake's acted_at stands in for received_at (they are equal in these tests).
        return [
            r
            for r in self.rows
            if r[0] > after_id and (received_since is None or r[4] >= received_since)
        ]


def _index(store: FakeStore, clock: Monotonic, days: float = 30.0) -> RecentActions:
    return RecentActions(store, period_days=days, monotonic=clock)


def _acted(recent: RecentActions, key: str, now: datetime = T0, issuer: str | None = EHR) -> bool:
    return recent.acted_on_since(key, now - 30 * DAY, issuer=issuer, tenant="t1", now=now)


def test_the_first_load_reads_the_period_then_only_new_rows() -> None:
    store, clock = FakeStore(), Monotonic()
    store.add("k1", T0 - DAY)
    recent = _index(store, clock)
    assert _acted(recent, "k1") and not _acted(recent, "k2")
    assert store.calls == [(0, T0 - 30 * DAY)]
    store.add("k2", T0)
    clock.now += 1.01
    assert _acted(recent, "k2") and _acted(recent, "k1")
    assert store.calls[1] == (1, T0 - 30 * DAY)  # after the highest id seen
    clock.now += 1.01
    _acted(recent, "k2")
    assert store.calls[2][0] == 2


def test_at_most_one_refresh_per_interval() -> None:
    store, clock = FakeStore(), Monotonic()
    recent = _index(store, clock)
    for _ in range(50):
        _acted(recent, "k1")
    assert len(store.calls) == 1
    store.add("k1", T0)
    clock.now += 1.0  # not more than the interval yet
    assert not _acted(recent, "k1")
    clock.now += 0.01
    assert _acted(recent, "k1")
    assert len(store.calls) == 2


def test_force_refresh_reads_at_once() -> None:
    store, clock = FakeStore(), Monotonic()
    recent = _index(store, clock)
    assert not _acted(recent, "k1")
    store.add("k1", T0)
    recent.force_refresh(T0)
    assert _acted(recent, "k1")


def test_the_latest_action_per_key_issuer_and_tenant_counts() -> None:
    store, clock = FakeStore(), Monotonic()
    store.add("k1", T0 - 20 * DAY)
    store.add("k1", T0 - 2 * DAY)
    store.add("k1", T0 - 10 * DAY)  # an older action arriving later does not shorten the silence
    store.add("k1", T0, issuer="https://other.example.org")
    recent = _index(store, clock)
    assert recent.acted_on_since("k1", T0 - 3 * DAY, issuer=EHR, tenant="t1", now=T0)
    assert not recent.acted_on_since("k1", T0 - DAY, issuer=EHR, tenant="t1", now=T0)
    assert not recent.acted_on_since("k1", T0 - DAY, issuer=EHR, tenant="t2", now=T0)
    assert not recent.acted_on_since("k1", T0 - DAY, issuer=None, tenant="t1", now=T0)


def test_a_refresh_in_progress_does_not_block_other_callers() -> None:
    """The thread that refreshes waits on the store; the others answer from the current data."""
    store, clock = FakeStore(), Monotonic()
    store.add("k1", T0)
    recent = _index(store, clock)
    assert _acted(recent, "k1")
    entered, release = threading.Event(), threading.Event()
    real_read = store.feedback_actions

    def slow_read(after_id: int, received_since: datetime | None = None) -> list[FeedbackAction]:
        entered.set()
        assert release.wait(10)
        return real_read(after_id, received_since)

    store.feedback_actions = slow_read  # type: ignore[method-assign]
    store.add("k2", T0)
    clock.now += 2
    refresher = threading.Thread(target=_acted, args=(recent, "k1"))
    refresher.start()
    try:
        assert entered.wait(10)
        answers = []
        done = threading.Event()

        def caller() -> None:
            answers.append((_acted(recent, "k1"), _acted(recent, "k2")))
            done.set()

        threading.Thread(target=caller).start()
        assert done.wait(5), "a caller waited for another thread's refresh"
        assert answers == [(True, False)]  # old data: k2 not read yet
    finally:
        release.set()
        refresher.join(10)
    assert _acted(recent, "k2")  # the refresh landed
    assert len(store.calls) == 2


def test_a_failing_refresh_keeps_the_old_data_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, clock = FakeStore(), Monotonic()
    store.add("k-secret", T0)
    recent = _index(store, clock)
    assert _acted(recent, "k-secret")
    store.error = StoreUnavailable("cannot use the database: k-secret disk I/O error")
    store.add("k2", T0)
    with caplog.at_level(logging.INFO, logger="cds_service.store.recent_actions"):
        for _ in range(5):
            clock.now += 1.5
            assert _acted(recent, "k-secret")  # still silenced: what was read before holds
            assert not _acted(recent, "k2")  # unknown: shown
        recent.force_refresh(T0)  # the feedback endpoint's refresh fails quietly too
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and len(store.calls) == 7
        message = warnings[0].getMessage()
        assert "suppression check failed" in message and "StoreUnavailable" in message
        assert "k-secret" not in message and EHR not in message
        store.error = None
        clock.now += 1.5
        assert _acted(recent, "k2")
        store.error = RuntimeError("down again")
        clock.now += 1.5
        _acted(recent, "k2")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "RuntimeError" in warnings[1].getMessage()


def test_a_failure_before_any_load_shows_every_card() -> None:
    store, clock = FakeStore(error=RuntimeError("down")), Monotonic()
    recent = _index(store, clock)
    assert not _acted(recent, "k1")


def test_actions_older_than_the_period_are_pruned() -> None:
    store, clock = FakeStore(), Monotonic()
    store.add("old", T0 - 29 * DAY)
    store.add("new", T0)
    recent = _index(store, clock)
    assert _acted(recent, "old") and len(recent) == 2
    clock.now += 1.5
    later = T0 + 2 * DAY
    assert not _acted(recent, "old", now=later) and _acted(recent, "new", now=later)
    assert len(recent) == 1


def test_a_full_reload_catches_rows_committed_out_of_id_order() -> None:
    """PostgreSQL: a transaction holding a lower id may commit after a higher one was read."""
    store, clock = FakeStore(), Monotonic()
    store.add("k1", T0)
    store.add("k2", T0)
    late = store.rows.pop(0)  # id 1 not committed yet when the index first reads
    recent = _index(store, clock)
    assert _acted(recent, "k2") and not _acted(recent, "k1")
    store.rows.insert(0, late)
    clock.now += 1.5
    assert not _acted(recent, "k1")  # the incremental read starts after id 2
    clock.now += 60
    assert _acted(recent, "k1")
    assert store.calls[-1][0] == 0


def test_zero_days_never_reads_the_store() -> None:
    store, clock = FakeStore(error=AssertionError("read")), Monotonic()
    recent = _index(store, clock, days=0)
    assert not recent.enabled
    assert not _acted(recent, "k1")
    recent.force_refresh(T0)
    assert store.calls == []
