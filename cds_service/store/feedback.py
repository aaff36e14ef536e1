"""Feedback as the store keeps it (made by :mod:`cds_service.hooks.feedback`), and the override
reasons this service offers: the card offers them, the report names them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

OVERRIDE_REASON_SYSTEM = "https://hfs-cds.example.org/fhir/CodeSystem/override-reason"
OVERRIDE_REASONS = (
    ("already-planned", "Follow-up already planned"),
    ("inputs-incorrect", "Operation time or House-Brackmann grade on record is wrong"),
    ("not-applicable", "Does not apply to this patient"),
    ("clinical-judgement", "Different plan on clinical judgement"),
)


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
