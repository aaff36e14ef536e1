"""Feedback validation (CDS Hooks 2.0 §6; checklist F1 and F2), without HTTP or a database."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cds_service.hooks.feedback import MAX_ENTRIES, InvalidFeedback, parse_feedback, parse_rfc3339
from cds_service.store.feedback import OVERRIDE_REASON_SYSTEM, FeedbackEntry, Outcome, ReasonCoding
from tests import fhir_builders as fb

CARD = "9b6f2bd7-8f4b-4d0c-a0a3-5f0f3c1e2a11"
SUGGESTION = "1f8c3a2e-6a1b-4b9e-9f1a-0e1d2c3b4a59"
WHEN = "2026-05-20T08:30:12.520Z"


def accepted(**changes: Any) -> dict[str, Any]:
    entry = {
        "card": CARD,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": SUGGESTION}],
        "outcomeTimestamp": WHEN,
    }
    return _apply(entry, changes)


def overridden(**changes: Any) -> dict[str, Any]:
    entry = {"card": CARD, "outcome": "overridden", "outcomeTimestamp": WHEN}
    return _apply(entry, changes)


def _apply(entry: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


def one(entry: dict[str, Any]) -> FeedbackEntry:
    (parsed,) = parse_feedback({"feedback": [entry]})
    return parsed


# -- F1: valid bodies ----------------------------------------------------------------------------


def test_accepted_with_accepted_suggestions() -> None:
    entry = one(accepted())
    assert entry == FeedbackEntry(
        card=CARD,
        outcome=Outcome.ACCEPTED,
        outcome_at=datetime(2026, 5, 20, 8, 30, 12, 520000, tzinfo=UTC),
        accepted_suggestions=(SUGGESTION,),
    )


def test_overridden_without_a_reason() -> None:
    entry = one(overridden())
    assert (entry.outcome, entry.reason, entry.has_comment) == (Outcome.OVERRIDDEN, None, False)


def test_overridden_with_a_reason_coding_without_display_as_the_sandbox_sends_it() -> None:
    entry = one(
        overridden(
            overrideReason={"reason": {"code": "already-planned", "system": OVERRIDE_REASON_SYSTEM}}
        )
    )
    assert entry.reason == ReasonCoding(code="already-planned", system=OVERRIDE_REASON_SYSTEM)


def test_overridden_with_a_reason_without_system() -> None:
    """The sandbox omits ``system`` when the reason had none."""
    assert one(overridden(overrideReason={"reason": {"code": "x"}})).reason == ReasonCoding("x")


def test_overridden_with_only_a_user_comment_keeps_its_length_not_its_text() -> None:
    entry = one(overridden(overrideReason={"userComment": fb.FREE_TEXT}))
    assert entry.reason is None
    assert entry.has_comment and entry.comment_length == len(fb.FREE_TEXT)
    assert fb.FREE_TEXT not in repr(entry)


def test_a_display_on_the_reason_is_accepted_and_dropped() -> None:
    coding = {"system": OVERRIDE_REASON_SYSTEM, "code": "not-applicable", "display": fb.FREE_TEXT}
    entry = one(overridden(overrideReason={"reason": coding, "userComment": "ok"}))
    assert entry.reason == ReasonCoding("not-applicable", OVERRIDE_REASON_SYSTEM)
    assert fb.FREE_TEXT not in repr(entry)


def test_several_entries_for_several_cards_and_the_same_card_twice() -> None:
    body = {"feedback": [accepted(), overridden(), overridden(card="other-card"), accepted()]}
    entries = parse_feedback(body)
    assert [e.card for e in entries] == [CARD, CARD, "other-card", CARD]


def test_tolerant_reader_ignores_unknown_and_inapplicable_members() -> None:
    body = {
        "feedback": [
            accepted(extension={"org.example": {"x": 1}}, overrideReason="not validated"),
            overridden(acceptedSuggestions="not validated either"),
        ],
        "extension": {"org.example.ehr": True},
    }
    first, second = parse_feedback(body)
    assert first.reason is None and second.accepted_suggestions == ()


def test_accepted_suggestion_ids_are_a_sorted_set() -> None:
    entry = one(accepted(acceptedSuggestions=[{"id": "b"}, {"id": "a"}, {"id": "b"}]))
    assert entry.accepted_suggestions == ("a", "b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1985-04-12T23:20:50.52Z", datetime(1985, 4, 12, 23, 20, 50, 520000, tzinfo=UTC)),
        ("2026-05-20T08:30:12.520Z", datetime(2026, 5, 20, 8, 30, 12, 520000, tzinfo=UTC)),
        ("2026-05-20T10:30:12+02:00", datetime(2026, 5, 20, 8, 30, 12, tzinfo=UTC)),
        ("2026-05-20t08:30:12z", datetime(2026, 5, 20, 8, 30, 12, tzinfo=UTC)),
        ("2026-05-20T08:30:12.123456789Z", datetime(2026, 5, 20, 8, 30, 12, 123457, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC)),  # a leap second
    ],
)
def test_rfc3339_timestamps_become_utc(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected
    assert parse_rfc3339(text).tzinfo is UTC


# -- F2: invalid bodies --------------------------------------------------------------------------

INVALID: list[tuple[str, Any, str]] = [
    ("not an object", [accepted()], "must be a JSON object"),
    ("no feedback array", {"cards": []}, "array 'feedback'"),
    ("feedback not an array", {"feedback": accepted()}, "array 'feedback'"),
    ("empty feedback", {"feedback": []}, "must not be empty"),
    ("entry not an object", {"feedback": ["x"]}, "feedback[0] must be an object"),
    ("card missing", {"feedback": [accepted(card=None)]}, "feedback[0].card"),
    ("card not a string", {"feedback": [accepted(card=7)]}, "feedback[0].card"),
    ("card empty", {"feedback": [accepted(card=" ")]}, "feedback[0].card"),
    ("card too long", {"feedback": [accepted(card="x" * 129)]}, "feedback[0].card is longer"),
    ("outcome missing", {"feedback": [accepted(outcome=None)]}, "feedback[0].outcome"),
    ("outcome not in the enum", {"feedback": [accepted(outcome="ignored")]}, "outcome must be"),
    ("outcome wrong case", {"feedback": [accepted(outcome="Accepted")]}, "outcome must be"),
    (
        "accepted without acceptedSuggestions",
        {"feedback": [accepted(acceptedSuggestions=None)]},
        "acceptedSuggestions must be a non-empty array",
    ),
    (
        "accepted with empty acceptedSuggestions",
        {"feedback": [accepted(acceptedSuggestions=[])]},
        "acceptedSuggestions must be a non-empty array",
    ),
    (
        "accepted suggestion without id",
        {"feedback": [accepted(acceptedSuggestions=[{"uuid": SUGGESTION}])]},
        "acceptedSuggestions[0].id",
    ),
    (
        "accepted suggestion id not a string",
        {"feedback": [accepted(acceptedSuggestions=[{"id": SUGGESTION}, {"id": 3}])]},
        "acceptedSuggestions[1].id",
    ),
    ("timestamp missing", {"feedback": [accepted(outcomeTimestamp=None)]}, "is required"),
    ("timestamp not a string", {"feedback": [accepted(outcomeTimestamp=1716193812)]}, "RFC 3339"),
    ("date only", {"feedback": [accepted(outcomeTimestamp="2026-05-20")]}, "RFC 3339"),
    ("no offset", {"feedback": [accepted(outcomeTimestamp="2026-05-20T08:30:12")]}, "RFC 3339"),
    (
        "space separator",
        {"feedback": [accepted(outcomeTimestamp="2026-05-20 08:30:12Z")]},
        "RFC 3339",
    ),
    (
        "impossible date",
        {"feedback": [accepted(outcomeTimestamp="2026-02-30T08:30:12Z")]},
        "RFC 3339",
    ),
    (
        "impossible hour",
        {"feedback": [accepted(outcomeTimestamp="2026-05-20T24:30:12Z")]},
        "RFC 3339",
    ),
    (
        "bad offset",
        {"feedback": [accepted(outcomeTimestamp="2026-05-20T08:30:12+25:00")]},
        "RFC 3339",
    ),
    ("human date", {"feedback": [accepted(outcomeTimestamp="May 20, 2026 8:30")]}, "RFC 3339"),
    (
        "overrideReason with neither reason nor comment",
        {"feedback": [overridden(overrideReason={})]},
        "must hold a 'reason', a 'userComment' or both",
    ),
    (
        "overrideReason with an empty comment only",
        {"feedback": [overridden(overrideReason={"userComment": ""})]},
        "must hold a 'reason', a 'userComment' or both",
    ),
    (
        "overrideReason not an object",
        {"feedback": [overridden(overrideReason="clinical-judgement")]},
        "overrideReason must be an object",
    ),
    (
        "reason without code",
        {"feedback": [overridden(overrideReason={"reason": {"system": OVERRIDE_REASON_SYSTEM}})]},
        "reason.code",
    ),
    (
        "reason code not a string",
        {"feedback": [overridden(overrideReason={"reason": {"code": 1}})]},
        "reason.code",
    ),
    (
        "reason system not a string",
        {"feedback": [overridden(overrideReason={"reason": {"code": "x", "system": 1}})]},
        "reason.system",
    ),
    (
        "reason not a Coding",
        {"feedback": [overridden(overrideReason={"reason": "already-planned"})]},
        "must be a Coding object",
    ),
    (
        "comment not a string",
        {"feedback": [overridden(overrideReason={"userComment": ["x"]})]},
        "userComment must be a string",
    ),
    (
        "the second entry is wrong",
        {"feedback": [accepted(), overridden(outcome="x")]},
        "feedback[1]",
    ),
    ("too many entries", {"feedback": [overridden()] * (MAX_ENTRIES + 1)}, "more than"),
]


@pytest.mark.parametrize(("body", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_feedback_names_the_problem(body: Any, message: str) -> None:
    with pytest.raises(InvalidFeedback) as caught:
        parse_feedback(copy.deepcopy(body))
    assert message in str(caught.value)


def test_messages_never_echo_values_from_the_body() -> None:
    with pytest.raises(InvalidFeedback) as caught:
        parse_feedback({"feedback": [overridden(outcome=fb.FREE_TEXT)]})
    assert fb.FREE_TEXT not in str(caught.value)


def test_invalid_feedback_is_a_value_error() -> None:
    assert issubclass(InvalidFeedback, ValueError)


# -- the natural key (idempotency) ---------------------------------------------------------------


def test_the_same_feedback_written_differently_has_the_same_key() -> None:
    a = one(accepted(acceptedSuggestions=[{"id": "s1"}, {"id": "s2"}]))
    b = one(
        accepted(
            acceptedSuggestions=[{"id": "s2"}, {"id": "s1"}],
            outcomeTimestamp="2026-05-20T10:30:12.52+02:00",
        )
    )
    assert a.natural_key("svc") == b.natural_key("svc")


def test_a_comment_does_not_change_the_key() -> None:
    reason = {"code": "already-planned", "system": OVERRIDE_REASON_SYSTEM}
    a = one(overridden(overrideReason={"reason": reason, "userComment": "long comment"}))
    b = one(overridden(overrideReason={"reason": reason}))
    assert a.natural_key("svc") == b.natural_key("svc")


@pytest.mark.parametrize(
    "other",
    [
        overridden(card="another-card"),
        accepted(),
        overridden(outcomeTimestamp="2026-05-20T08:30:13.520Z"),
        overridden(overrideReason={"reason": {"code": "already-planned"}}),
        overridden(overrideReason={"reason": {"code": "already-planned", "system": "urn:x"}}),
    ],
)
def test_different_feedback_has_a_different_key(other: dict[str, Any]) -> None:
    assert one(overridden()).natural_key("svc") != one(other).natural_key("svc")


def test_the_key_depends_on_the_service() -> None:
    entry = one(overridden())
    assert entry.natural_key("svc-a") != entry.natural_key("svc-b")


def test_offsets_other_than_utc_are_kept_as_the_same_instant() -> None:
    entry = one(overridden(outcomeTimestamp="2026-05-20T08:30:12-05:30"))
    local = timezone(-timedelta(hours=5, minutes=30))
    assert entry.outcome_at == datetime(2026, 5, 20, 8, 30, 12, tzinfo=local)
