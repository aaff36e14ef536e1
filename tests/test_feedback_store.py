"""Feedback storage on SQLite and PostgreSQL: idempotent, unknown cards flagged, no comment text.

Includes the concurrency test of issue 6: 16 threads post thousands of feedback bodies, with
repeats, and every distinct entry is stored exactly once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import tests.postgres
from cds_service.hooks.feedback import parse_feedback
from cds_service.store import FeedbackResult, Store, StoreError, open_store
from cds_service.store.feedback import (
    OVERRIDE_REASON_SYSTEM,
    OVERRIDE_REASONS,
    FeedbackEntry,
    Outcome,
    ReasonCoding,
)
from cds_service.store.schema import feedback
from tests import fhir_builders as fb
from tests.test_store_audit import all_text, synthetic_record

# Fixtures from tests/postgres.py (redundant once conftest.py lists it in pytest_plugins).
postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url
store = tests.postgres.store

SERVICE = "hfs-rfa-recurrence-patient-view"
T0 = datetime(2026, 5, 20, 8, 0, tzinfo=UTC)


def rows(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(feedback).order_by(feedback.c.id))]


def test_feedback_is_stored_with_what_governance_needs(store: Store) -> None:
    store.write_audit([synthetic_record("card-1", T0, suggestion_ids=("s-1",))])
    body = {
        "feedback": [
            {
                "card": "card-1",
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "s-1"}],
                "outcomeTimestamp": "2026-05-20T08:03:00Z",
            },
            {
                "card": "card-1",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "already-planned", "system": OVERRIDE_REASON_SYSTEM},
                    "userComment": fb.FREE_TEXT,
                },
                "outcomeTimestamp": "2026-05-20T10:05:00+02:00",
            },
        ]
    }
    result = store.save_feedback(
        SERVICE,
        parse_feedback(body),
        received_at=T0 + timedelta(minutes=6),
        issuer="https://ehr.example.org",
        tenant="hospital-1",
    )
    assert result == FeedbackResult(stored=2, duplicates=0, unknown_cards=0)
    first, second = rows(store)
    assert first["outcome"] == "accepted" and first["accepted_suggestions"] == ["s-1"]
    assert first["outcome_at"] == T0 + timedelta(minutes=3)
    assert first["received_at"] == T0 + timedelta(minutes=6)
    assert (first["issuer"], first["tenant"], first["card_known"]) == (
        "https://ehr.example.org",
        "hospital-1",
        True,
    )
    assert (second["reason_system"], second["reason_code"]) == (
        OVERRIDE_REASON_SYSTEM,
        "already-planned",
    )
    assert second["has_comment"] is True
    assert second["comment_length"] == len(fb.FREE_TEXT)
    assert second["outcome_at"] == T0 + timedelta(minutes=5)


def test_repeats_are_stored_once(store: Store) -> None:
    body = {
        "feedback": [
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-05-20T08:03:00Z"},
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-05-20T08:03:00.000Z"},
        ]
    }
    first = store.save_feedback(SERVICE, parse_feedback(body))
    again = store.save_feedback(SERVICE, parse_feedback(body))
    assert first == FeedbackResult(stored=1, duplicates=1, unknown_cards=2)
    assert again == FeedbackResult(stored=0, duplicates=2, unknown_cards=2)
    assert len(rows(store)) == 1


def test_the_same_feedback_to_another_service_is_another_entry(store: Store) -> None:
    entries = parse_feedback(
        {
            "feedback": [
                {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-05-20T08:03:00Z"}
            ]
        }
    )
    store.save_feedback("svc-a", entries)
    store.save_feedback("svc-b", entries)
    assert len(rows(store)) == 2


def test_unknown_cards_are_stored_and_flagged(store: Store) -> None:
    store.write_audit([synthetic_record("known", T0)])
    body = {
        "feedback": [
            {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-05-20T08:03:00Z"}
            for card in ("known", "unknown")
        ]
    }
    result = store.save_feedback(SERVICE, parse_feedback(body))
    assert result == FeedbackResult(stored=2, duplicates=0, unknown_cards=1)
    assert {r["card_uuid"]: r["card_known"] for r in rows(store)} == {
        "known": True,
        "unknown": False,
    }


def test_no_comment_text_token_or_display_is_stored(store: Store) -> None:
    token = "eyJhbGciOiJSUzM4NCJ9.fake-bearer-token.c2lnbmF0dXJl"
    body = {
        "feedback": [
            {
                "card": "c",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "clinical-judgement", "display": fb.FREE_TEXT},
                    "userComment": f"{fb.FREE_TEXT} Bearer {token}",
                },
                "outcomeTimestamp": "2026-05-20T08:03:00Z",
                "extension": {"org.example.token": token},
            }
        ]
    }
    store.save_feedback(SERVICE, parse_feedback(body))
    text = all_text(store)
    assert "clinical-judgement" in text  # the grep does see the row
    for secret in (token, fb.FREE_TEXT, "Chen", "eyelid"):
        assert secret not in text


def test_feedback_is_durable_when_save_returns(store: Store, database_url: str) -> None:
    """Another connection (another replica) sees the entry as soon as the call returns."""
    entries = parse_feedback(
        {
            "feedback": [
                {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-05-20T08:03:00Z"}
            ]
        }
    )
    store.save_feedback(SERVICE, entries)
    other = open_store(database_url)
    try:
        with other.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(feedback)).scalar() == 1
    finally:
        other.close()


def test_a_database_failure_is_a_store_error_and_stores_nothing(store: Store) -> None:
    entries = parse_feedback(
        {
            "feedback": [
                {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-05-20T08:03:00Z"}
            ]
        }
    )
    with store.engine.begin() as conn:
        conn.execute(feedback.delete())
        conn.exec_driver_sql("DROP TABLE feedback")  # a broken database
    with pytest.raises(StoreError, match="feedback could not be stored|cannot use the database"):
        store.save_feedback(SERVICE, entries)


# -- concurrency ---------------------------------------------------------------------------------

WRITERS = 16
DISTINCT = 2100


def _distinct_entries(rng: random.Random) -> list[FeedbackEntry]:
    entries = []
    for i in range(DISTINCT):
        card = f"card-{i // 3:05d}"  # three entries per card: several outcomes over time
        at = T0 + timedelta(seconds=i)
        kind = i % 4
        if kind == 0:
            entries.append(FeedbackEntry(card, Outcome.ACCEPTED, at, accepted_suggestions=("s",)))
        elif kind == 1:
            entries.append(FeedbackEntry(card, Outcome.OVERRIDDEN, at))
        elif kind == 2:
            code = rng.choice(OVERRIDE_REASONS)[0]
            reason = ReasonCoding(code, OVERRIDE_REASON_SYSTEM)
            entries.append(FeedbackEntry(card, Outcome.OVERRIDDEN, at, reason=reason))
        else:
            entries.append(FeedbackEntry(card, Outcome.OVERRIDDEN, at, comment_length=12))
    return entries


def test_16_concurrent_writers_store_every_entry_exactly_once(
    store: Store, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(6)
    distinct = _distinct_entries(rng)
    store.write_audit([synthetic_record(f"card-{i:05d}", T0) for i in range(0, DISTINCT // 3, 2)])
    # Every entry is posted 1 to 4 times, in bodies of 1 to 4 entries, spread over the writers.
    posted = [e for e in distinct for _ in range(rng.randint(1, 4))]
    rng.shuffle(posted)
    bodies: list[list[FeedbackEntry]] = []
    while posted:
        size = rng.randint(1, 4)
        bodies.append(posted[:size])
        posted = posted[size:]
    total_entries = sum(len(b) for b in bodies)
    results: list[list[FeedbackResult]] = [[] for _ in range(WRITERS)]
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def writer(n: int) -> None:
        try:
            start.wait()
            for body in bodies[n::WRITERS]:
                results[n].append(store.save_feedback(SERVICE, body))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began

    assert not errors, errors
    done = [r for per_writer in results for r in per_writer]
    assert len(done) == len(bodies)
    assert sum(r.stored for r in done) == DISTINCT
    assert sum(r.duplicates for r in done) == total_entries - DISTINCT
    stored = rows(store)
    keys = Counter(r["natural_key"] for r in stored)
    assert len(stored) == DISTINCT and max(keys.values()) == 1
    assert set(keys) == {e.natural_key(SERVICE) for e in distinct}
    known = {f"card-{i:05d}" for i in range(0, DISTINCT // 3, 2)}
    assert all(r["card_known"] == (r["card_uuid"] in known) for r in stored)
    with capsys.disabled():
        print(
            f"\n[figures] concurrency {store.backend}: {WRITERS} threads, {len(bodies)} posts, "
            f"{total_entries} entries ({DISTINCT} distinct) -> {len(stored)} rows in {elapsed:.2f} s"
        )
