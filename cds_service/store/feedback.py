"""Feedback as the store keeps it (made by :mod:`cds_service.hooks.feedback`), the override
reasons this service offers (the card offers them, the report names them), and the rules that keep
one EHR from writing feedback it has no business writing.

:class:`FeedbackPolicy` is what :meth:`~cds_service.store.database.Store.save_feedback` enforces
for the feedback endpoint (issue 15, item 4):

- **Only cards this service returned to the sender.** Every entry must name a card whose audit
  record has the same service id, EHR issuer and tenant as the POST; otherwise nothing is stored
  (:class:`CardNotIssued`). A card shown to another EHR and a card never shown get the same
  answer, so the refusal tells an EHR nothing about another EHR's cards. Feedback then always
  belongs to the EHR that received the card, and can neither be counted in another EHR's figures
  nor turn that EHR's own feedback into a "duplicate".
- **A bounded number of entries per card** (:data:`MAX_FEEDBACK_PER_CARD`): a clinician acts on a
  card once or a few times; more distinct entries are refused (:class:`CardFeedbackFull`). Stored
  feedback is then at most a small multiple of the cards shown.
- **A bounded rate per issuer** (:data:`MAX_FEEDBACK_PER_ISSUER` entries stored in any
  :data:`FEEDBACK_WINDOW`): past it, nothing is stored and the EHR is told when to try again
  (:class:`FeedbackRateLimited`). The count is of rows in the store, in the same transaction as the
  insert, not a per-process token bucket: the store is what fills up, it is shared by every worker
  and replica (a bucket per process would multiply the limit by their number and forget it on each
  restart), and feedback is rare enough that one indexed count per POST costs nothing that shows.
  The issuer is the unit because it is what the JWT authenticates; ``tenant`` is a claim the
  issuer chooses, so per-tenant limits would be the issuer's to multiply.

Messages name entries by position only and never echo a value from the body.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

OVERRIDE_REASON_SYSTEM = "https://hfs-cds.example.org/fhir/CodeSystem/override-reason"
OVERRIDE_REASONS = (
    ("already-planned", "Follow-up already planned"),
    ("inputs-incorrect", "Operation time or House-Brackmann grade on record is wrong"),
    ("not-applicable", "Does not apply to this patient"),
    ("clinical-judgement", "Different plan on clinical judgement"),
)

#: Distinct feedback entries kept per card (later ones are refused). Suggested setting:
#: ``CDS_FEEDBACK_MAX_PER_CARD``.
MAX_FEEDBACK_PER_CARD: Final = 10
#: Feedback entries one issuer may have stored within :data:`FEEDBACK_WINDOW`. Suggested settings:
#: ``CDS_FEEDBACK_MAX_PER_ISSUER`` and ``CDS_FEEDBACK_WINDOW_SECONDS``.
MAX_FEEDBACK_PER_ISSUER: Final = 2000
FEEDBACK_WINDOW: Final = timedelta(hours=1)


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    OVERRIDDEN = "overridden"


@dataclass(frozen=True, slots=True)
class ReasonCoding:
    """The override reason the clinician picked: a Coding without its display."""

    code: str
    system: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    """One validated feedback entry, holding nothing the store must not keep."""

    card: str
    outcome: Outcome
    outcome_at: datetime  # UTC
    accepted_suggestions: tuple[str, ...] = ()  # sorted, unique; only for ``accepted``
    reason: ReasonCoding | None = None  # only for ``overridden``
    comment_length: int | None = None  # length of the userComment, which itself is discarded

    @property
    def has_comment(self) -> bool:
        return self.comment_length is not None

    def natural_key(self, service_id: str) -> str:
        """What makes two submissions "the same feedback" (hex SHA-256, the unique key in the store).

        Service id, card uuid, outcome, the outcome instant (in UTC, so ``Z`` and ``+00:00`` agree),
        the accepted suggestion ids (as a set) and the reason system and code. Whether a comment
        was sent is not part of it: a repeat is a repeat even if the EHR trims the comment.
        """
        parts = [
            service_id,
            self.card,
            self.outcome.value,
            self.outcome_at.astimezone(UTC).isoformat(timespec="microseconds"),
            list(self.accepted_suggestions),
            self.reason.system if self.reason and self.reason.system else "",
            self.reason.code if self.reason else "",
        ]
        canonical = json.dumps(parts, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class FeedbackPolicy:
    """What :meth:`~cds_service.store.database.Store.save_feedback` checks before it commits."""

    #: Refuse entries naming a card not returned by this service to this issuer and tenant.
    issued_cards_only: bool = True
    max_per_card: int = MAX_FEEDBACK_PER_CARD
    max_per_issuer: int = MAX_FEEDBACK_PER_ISSUER
    window: timedelta = FEEDBACK_WINDOW

    def __post_init__(self) -> None:
        if self.max_per_card < 1 or self.max_per_issuer < 1 or self.window <= timedelta(0):
            raise ValueError("feedback limits must be positive")


#: The endpoint's policy.
DEFAULT_POLICY: Final = FeedbackPolicy()


class FeedbackRefused(Exception):
    """The POST breaks a :class:`FeedbackPolicy` rule; nothing of it was stored.

    The message is safe to send back: it names an entry by position, never a value.
    """


class CardNotIssued(FeedbackRefused):
    """An entry names a card this service did not return to the sending EHR (and tenant)."""

    def __init__(self, index: int) -> None:
        super().__init__(
            f"feedback[{index}].card is not a card this service returned to this client; "
            "nothing was stored"
        )
        self.index = index


class CardFeedbackFull(FeedbackRefused):
    """An entry would give a card more than :attr:`FeedbackPolicy.max_per_card` entries."""

    def __init__(self, index: int, limit: int) -> None:
        super().__init__(
            f"feedback[{index}].card already has {limit} feedback entries, the most kept for one "
            "card; nothing was stored"
        )
        self.index = index


class FeedbackRateLimited(FeedbackRefused):
    """The issuer's feedback within the window would pass :attr:`FeedbackPolicy.max_per_issuer`."""

    def __init__(self, limit: int, window: timedelta, retry_after_seconds: int) -> None:
        super().__init__(
            f"more than {limit} feedback entries from this client within "
            f"{_window_text(window)}; nothing was stored, send again in "
            f"{retry_after_seconds} s"
        )
        self.retry_after_seconds = retry_after_seconds


def _window_text(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return "an hour" if hours == 1 else f"{hours} hours"
    return f"{seconds} s"
