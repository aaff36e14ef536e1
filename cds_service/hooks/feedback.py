"""CDS Hooks feedback (``POST /cds-services/{id}/feedback``): parsing, validation, refusals.

Pure: no Flask, no database. The web layer passes the decoded JSON body to :func:`parse_feedback`,
answers 400 with the :class:`InvalidFeedback` message, and hands the entries to the store
(:meth:`cds_service.store.Store.save_feedback` with
:data:`~cds_service.store.feedback.DEFAULT_POLICY`), which writes them synchronously or refuses the
whole POST; :func:`refusal` says how to answer a refusal:

- an entry naming a card this service did not return to this EHR (issuer and tenant), never shown
  or shown to another EHR alike: **422** ``not-found``, nothing stored (the CDS Hooks
  specification defines no feedback status codes; 422 says "well-formed, but not acceptable",
  which a resend will not change). Unless the audit writer had not caught up within its wait:
  the card may be in flight to the audit trail, so **503** ``transient`` with ``Retry-After``;
- a card that already has the most entries kept for one card: **422** ``business-rule``;
- an EHR past its feedback rate: **429** ``throttled`` with ``Retry-After`` (seconds).

Rules (CDS Hooks 2.0 §"Feedback", checklist F1/F2 in ``shared/design/cds-hooks.md``):

- the body is an object with a non-empty array ``feedback``;
- every entry has a string ``card`` and an ``outcome`` of ``accepted`` or ``overridden``;
- ``accepted`` needs a non-empty ``acceptedSuggestions``, each with a string ``id``;
- ``outcomeTimestamp`` is an RFC 3339 date-time with an offset (converted to UTC);
- ``overrideReason``, when sent with ``overridden``, holds a ``reason`` Coding (``code`` required,
  ``system`` optional, ``display`` *not* required: the sandbox omits it), a ``userComment``, or both.

Tolerant reader: unknown members, and members that do not apply to the outcome (``overrideReason``
on an accepted card, ``acceptedSuggestions`` on an overridden one), are ignored, not validated.

**The clinician's ``userComment`` is never kept.** It is free text typed at the bedside and may hold
protected health information, which the audit trail promises never to store. An entry records only
that a comment was made and its length (governance can then see *that* clinicians explain
overrides, and follow up in the EHR, where the comment already lives under the EHR's own access
control). The Coding ``display`` is dropped too: ``system`` and ``code`` identify the reason, and
the report shows the display of the service's own reasons from ``store.feedback.OVERRIDE_REASONS``.
Error messages name the offending member but never echo a value from the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from cds_service.store.feedback import (
    CardFeedbackFull,
    CardNotIssued,
    FeedbackEntry,
    FeedbackRateLimited,
    FeedbackRefused,
    Outcome,
    ReasonCoding,
)

#: Most entries accepted in one POST (an EHR batches a handful; this bounds the work of one call).
MAX_ENTRIES = 1000
#: Longest card uuid or suggestion id kept (ours are 36-character UUIDs; the column holds 128).
MAX_ID_LENGTH = 128
#: Longest reason ``system`` / ``code`` kept.
MAX_SYSTEM_LENGTH = 255
MAX_CODE_LENGTH = 128

# RFC 3339 §5.6 date-time: full-date "T" full-time, with a mandatory offset.
_RFC3339 = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[Tt]"
    r"(?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})(?:\.(?P<frac>\d+))?"
    r"(?P<tz>[Zz]|[+-]\d{2}:\d{2})"
)


class InvalidFeedback(ValueError):
    """The feedback body breaks the CDS Hooks rules; the message names the member (400 answer)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """How to answer a POST the store refused: status, OperationOutcome issue code, text, headers."""

    status: int
    issue_code: str
    diagnostics: str
    headers: dict[str, str] = field(default_factory=dict)


def refusal(error: FeedbackRefused, *, audit_caught_up: bool = True) -> Refusal:
    """The answer to a refused POST (see the module docstring). ``audit_caught_up``: whether every
    audit record queued before the feedback had been written when the store was asked."""
    if isinstance(error, FeedbackRateLimited):
        return Refusal(
            429, "throttled", str(error), {"Retry-After": str(error.retry_after_seconds)}
        )
    if isinstance(error, CardNotIssued) and not audit_caught_up:
        return Refusal(
            503,
            "transient",
            f"feedback[{error.index}].card is not in the audit trail yet; nothing was stored, "
            "send it again",
            {"Retry-After": "5"},
        )
    if isinstance(error, CardFeedbackFull):
        return Refusal(422, "business-rule", str(error))
    return Refusal(422, "not-found", str(error))


def parse_feedback(body: Any) -> list[FeedbackEntry]:
    """Validate a decoded feedback body; raise :class:`InvalidFeedback` naming the first problem."""
    if not isinstance(body, dict):
        raise InvalidFeedback("the feedback body must be a JSON object")
    items = body.get("feedback")
    if not isinstance(items, list):
        raise InvalidFeedback("the body must have an array 'feedback'")
    if not items:
        raise InvalidFeedback("'feedback' must not be empty")
    if len(items) > MAX_ENTRIES:
        raise InvalidFeedback(f"'feedback' has more than {MAX_ENTRIES} entries")
    return [_entry(item, f"feedback[{i}]") for i, item in enumerate(items)]


def parse_rfc3339(value: Any) -> datetime:
    """An RFC 3339 date-time with an offset, as an aware UTC datetime; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    match = _RFC3339.fullmatch(value)
    if not match:
        raise ValueError("not an RFC 3339 date-time with a time zone offset")
    frac = match["frac"] or "0"
    micro = int(round(int(frac) / 10 ** len(frac) * 1_000_000))
    tz_text = match["tz"]
    if tz_text in ("Z", "z"):
        tz = UTC
    else:
        sign = 1 if tz_text[0] == "+" else -1
        hours, minutes = int(tz_text[1:3]), int(tz_text[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError("invalid offset")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    second = int(match["s"])
    leap = second == 60  # RFC 3339 allows a leap second; datetime does not
    moment = datetime(
        int(match["y"]),
        int(match["mo"]),
        int(match["d"]),
        int(match["h"]),
        int(match["mi"]),
        59 if leap else second,
        0,
        tzinfo=tz,
    )
    moment += timedelta(seconds=1 if leap else 0, microseconds=micro)
    return moment.astimezone(UTC)


def _entry(item: Any, where: str) -> FeedbackEntry:
    if not isinstance(item, dict):
        raise InvalidFeedback(f"{where} must be an object")
    card = item.get("card")
    if not isinstance(card, str) or not card.strip():
        raise InvalidFeedback(f"{where}.card must be a non-empty string (the card's uuid)")
    if len(card) > MAX_ID_LENGTH:
        raise InvalidFeedback(f"{where}.card is longer than {MAX_ID_LENGTH} characters")
    raw_outcome = item.get("outcome")
    if raw_outcome not in (Outcome.ACCEPTED.value, Outcome.OVERRIDDEN.value):
        raise InvalidFeedback(f"{where}.outcome must be 'accepted' or 'overridden'")
    outcome = Outcome(raw_outcome)
    if "outcomeTimestamp" not in item:
        raise InvalidFeedback(f"{where}.outcomeTimestamp is required")
    try:
        outcome_at = parse_rfc3339(item["outcomeTimestamp"])
    except (ValueError, OverflowError) as exc:
        raise InvalidFeedback(
            f"{where}.outcomeTimestamp must be an RFC 3339 date-time with a time zone "
            "(e.g. 2026-05-01T10:00:00.000Z)"
        ) from exc
    if outcome is Outcome.ACCEPTED:
        return FeedbackEntry(card, outcome, outcome_at, accepted_suggestions=_accepted(item, where))
    reason, comment_length = _override_reason(item, where)
    return FeedbackEntry(card, outcome, outcome_at, reason=reason, comment_length=comment_length)


def _accepted(item: dict[str, Any], where: str) -> tuple[str, ...]:
    suggestions = item.get("acceptedSuggestions")
    if not isinstance(suggestions, list) or not suggestions:
        raise InvalidFeedback(
            f"{where}.acceptedSuggestions must be a non-empty array when the outcome is 'accepted'"
        )
    ids: set[str] = set()
    for j, suggestion in enumerate(suggestions):
        sid = suggestion.get("id") if isinstance(suggestion, dict) else None
        if not isinstance(sid, str) or not sid.strip():
            raise InvalidFeedback(f"{where}.acceptedSuggestions[{j}].id must be a non-empty string")
        if len(sid) > MAX_ID_LENGTH:
            raise InvalidFeedback(
                f"{where}.acceptedSuggestions[{j}].id is longer than {MAX_ID_LENGTH} characters"
            )
        ids.add(sid)
    return tuple(sorted(ids))


def _override_reason(item: dict[str, Any], where: str) -> tuple[ReasonCoding | None, int | None]:
    if "overrideReason" not in item:
        return None, None
    override = item["overrideReason"]
    if not isinstance(override, dict):
        raise InvalidFeedback(f"{where}.overrideReason must be an object")
    reason = None
    if "reason" in override:
        reason = _coding(override["reason"], f"{where}.overrideReason.reason")
    comment = override.get("userComment")
    if comment is not None and not isinstance(comment, str):
        raise InvalidFeedback(f"{where}.overrideReason.userComment must be a string")
    comment_length = len(comment) if comment else None
    if reason is None and comment_length is None:
        raise InvalidFeedback(
            f"{where}.overrideReason must hold a 'reason', a 'userComment' or both"
        )
    return reason, comment_length


def _coding(value: Any, where: str) -> ReasonCoding:
    if not isinstance(value, dict):
        raise InvalidFeedback(f"{where} must be a Coding object")
    code = value.get("code")
    if not isinstance(code, str) or not code.strip():
        raise InvalidFeedback(f"{where}.code must be a non-empty string")
    if len(code) > MAX_CODE_LENGTH:
        raise InvalidFeedback(f"{where}.code is longer than {MAX_CODE_LENGTH} characters")
    system = value.get("system")
    if system is not None and not isinstance(system, str):
        raise InvalidFeedback(f"{where}.system must be a string")
    if system and len(system) > MAX_SYSTEM_LENGTH:
        raise InvalidFeedback(f"{where}.system is longer than {MAX_SYSTEM_LENGTH} characters")
    return ReasonCoding(code=code, system=system or None)
