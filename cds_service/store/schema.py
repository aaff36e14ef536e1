"""The tables as of the newest migration (what the queries use).

Besides audit records and feedback (kept), the store holds the service's ephemeral shared state
(schema 5, issue 14): the JWT replay cache and the SMART sessions, shared by every worker and every
replica on the same database. Nothing there must survive; it is purged on a schedule.

:mod:`cds_service.store.migrations` creates and alters them; its migration functions carry their
own frozen copies of the definitions, so a later change here never rewrites history. A test checks
that a database upgraded from zero has exactly the columns declared here.

Nothing here holds a token, free text or a patient name. The FHIR patient id *is* stored in
``audit_record.patient_id``: it is needed to answer "what did the service tell the clinician about
this patient", it is PHI-adjacent (a record locator), and it is deleted with the row by the
retention purge.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on both backends.

    PostgreSQL stores ``timestamptz``. SQLite has no time zones, so the value is stored as naive
    UTC text (which sorts and compares correctly) and read back as aware UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json_type() -> TypeEngine[Any]:
    """JSON text on SQLite, ``jsonb`` on PostgreSQL."""
    return JSON().with_variant(JSONB(), "postgresql")


def id_type() -> TypeEngine[int]:
    """A 64-bit surrogate key; plain INTEGER on SQLite so that it aliases the rowid."""
    return BigInteger().with_variant(Integer(), "sqlite")


metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", UtcDateTime(), nullable=False),
)

#: One row per CDS card the service returned (one hook call produces at most one card).
audit_record = Table(
    "audit_record",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("card_uuid", String(128), nullable=False, unique=True),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("service_id", String(128), nullable=False),
    Column("hook", String(128), nullable=False),
    Column("hook_instance", String(128), nullable=False),
    Column("patient_id", String(255)),
    Column("issuer", String(255)),
    Column("tenant", String(255)),
    Column("model_id", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("tier", String(32)),
    Column("indicator", String(16), nullable=False),
    Column("summary", String(255), nullable=False),
    Column("months_since_procedure", Float),
    Column("risks", json_type(), nullable=False),
    Column("conditional_risk", json_type()),
    Column("inputs", json_type(), nullable=False),
    Column("reasons", json_type(), nullable=False),
    Column("suggestion_ids", json_type(), nullable=False),
    # Hash of what the card was derived from (store/inputs_key.py); NULL on rows from schema 1.
    Column("inputs_key", String(64)),
    # ``cds_service.__version__`` of the service that wrote the card; NULL on rows from before
    # schema 4 (reported as "unknown").
    Column("software_version", String(32)),
    Index("ix_audit_record_recorded_at", "recorded_at"),
    Index("ix_audit_record_patient_id", "patient_id"),
)

#: One row per distinct feedback entry (repeats are ignored through ``natural_key``).
feedback = Table(
    "feedback",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("natural_key", String(64), nullable=False, unique=True),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("service_id", String(128), nullable=False),
    Column("card_uuid", String(128), nullable=False),
    Column("card_known", Boolean(), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("outcome_at", UtcDateTime(), nullable=False),
    Column("accepted_suggestions", json_type(), nullable=False),
    Column("reason_system", String(255)),
    Column("reason_code", String(128)),
    Column("has_comment", Boolean(), nullable=False),
    Column("comment_length", Integer),
    Column("issuer", String(255)),
    Column("tenant", String(255)),
    # The inputs key of the card, copied from its audit record when the feedback is stored, so the
    # patient-view suppression read touches only feedback rows (few), never every card shown.
    Column("inputs_key", String(64)),
    Index("ix_feedback_card_uuid", "card_uuid"),
    Index("ix_feedback_received_at", "received_at"),
    Index("ix_feedback_inputs_key", "inputs_key"),
)

# -- ephemeral shared state (schema 5): the JWT replay cache and the SMART sessions ------------------
# Times here are POSIX seconds (floats): they are compared with the clock of whichever process reads
# them, never shown, and a float compares the same on both backends.

#: Accepted ``(iss, jti)`` pairs, as a SHA-256 (the raw values are never stored), each refused until
#: ``until`` (store/replay_cache.py).
replay_seen = Table(
    "replay_seen",
    metadata,
    Column("pair", LargeBinary(32), primary_key=True),
    Column("until", Float, nullable=False),
    Index("ix_replay_seen_until", "until"),
    sqlite_with_rowid=False,  # the key is the pair: one b-tree, not a rowid table and an index
)

#: SMART browser sessions (smart/shared_sessions.py): ``id`` is the SHA-256 of the cookie, ``key_id``
#: names the key that sealed the session's secrets, ``signed_in`` tells the two pools apart.
smart_session = Table(
    "smart_session",
    metadata,
    Column("id", LargeBinary(32), primary_key=True),
    Column("key_id", LargeBinary(16), nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("signed_in", Boolean(), nullable=False),
    Index("ix_smart_session_last_seen", "last_seen"),
    Index("ix_smart_session_pool", "signed_in", "last_seen"),
)


def _session_ref() -> Column[bytes]:
    return Column(
        "session",
        LargeBinary(32),
        ForeignKey("smart_session.id", ondelete="CASCADE"),
        nullable=False,
    )


#: Authorization requests in flight (``state`` as a SHA-256, the rest sealed); ``seq`` orders rows
#: by insertion for the per-session maxima.
smart_pending = Table(
    "smart_pending",
    metadata,
    Column("seq", id_type(), primary_key=True, autoincrement=True),
    _session_ref(),
    Column("state", LargeBinary(32), nullable=False),
    Column("sealed", LargeBinary(), nullable=False),
    UniqueConstraint("session", "state", name="uq_smart_pending_session_state"),
)

#: ``state`` values already used (to say "used" rather than "unknown").
smart_used_state = Table(
    "smart_used_state",
    metadata,
    Column("seq", id_type(), primary_key=True, autoincrement=True),
    _session_ref(),
    Column("state", LargeBinary(32), nullable=False),
    UniqueConstraint("session", "state", name="uq_smart_used_state_session_state"),
)

#: Completed launches (sealed tokens and context) and the refresh lease of each.
smart_launch = Table(
    "smart_launch",
    metadata,
    Column("seq", id_type(), primary_key=True, autoincrement=True),
    _session_ref(),
    Column("ref", String(64), nullable=False),
    Column("sealed", LargeBinary(), nullable=False),
    Column("lease_owner", LargeBinary(16)),
    Column("lease_until", Float, nullable=False),
    UniqueConstraint("session", "ref", name="uq_smart_launch_session_ref"),
)
