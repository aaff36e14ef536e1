"""Schema migrations: a ``schema_version`` table and an ordered list of functions, nothing more.

Why not Alembic: two tables, append-mostly, one code path on two backends. Alembic would add a
dependency, an ``env.py``, a script directory to ship as package data and its own CLI to wrap,
for features this store does not need yet (autogenerate, branches, downgrades). Every migration
here runs in one transaction (PostgreSQL and SQLite both have transactional DDL) under a lock
(``pg_advisory_xact_lock`` / SQLite's ``BEGIN IMMEDIATE``), so replicas that run
``hfs-cds db upgrade`` at the same time apply each step exactly once. If a future migration needs
SQLite table rebuilds (changing a column type, adding a constraint), Alembic's batch mode becomes
worth its weight: adopt it then and ``alembic stamp`` the version reached here.

Rules for adding a migration: append a :class:`Migration` with the next version number; write its
DDL with its own table definitions (never import the current ones from :mod:`.schema`, which
describe the newest version); update :mod:`.schema` to match. ``test_store_migrations`` checks
that an upgraded database has exactly the columns :mod:`.schema` declares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
    inspect,
    select,
    text,
)

from cds_service.store.errors import SchemaNotInitialised, SchemaOutdated, SchemaTooNew
from cds_service.store.schema import UtcDateTime, id_type, json_type, schema_version

log = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock held while migrating (any constant unique to this app).
_PG_LOCK_KEY = 0x48465343_44530001  # "HFSCDS" + 1


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _v1_audit_and_feedback(conn: Connection) -> None:
    """Version 1: audit records and feedback (frozen definitions; do not edit after release)."""
    md = MetaData()
    Table(
        "audit_record",
        md,
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
        Index("ix_audit_record_recorded_at", "recorded_at"),
        Index("ix_audit_record_patient_id", "patient_id"),
    )
    Table(
        "feedback",
        md,
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
        Index("ix_feedback_card_uuid", "card_uuid"),
        Index("ix_feedback_received_at", "received_at"),
    )
    md.create_all(conn, checkfirst=False)


def _v2_audit_inputs_key(conn: Connection) -> None:
    """Version 2: the inputs key on audit records, indexed for the patient-view suppression read.

    Plain DDL that both backends accept (ADD COLUMN of a nullable column is instant on both).
    """
    conn.execute(text("ALTER TABLE audit_record ADD COLUMN inputs_key VARCHAR(64)"))
    conn.execute(text("CREATE INDEX ix_audit_record_inputs_key ON audit_record (inputs_key)"))


def _v3_feedback_inputs_key(conn: Connection) -> None:
    """Version 3: the inputs key on feedback too, copied from the card's audit record.

    Reading it there costs one index probe per hook call; joining from the audit records cost one
    probe per card ever shown for those inputs (every chart opening), which grew without bound.
    """
    conn.execute(text("ALTER TABLE feedback ADD COLUMN inputs_key VARCHAR(64)"))
    conn.execute(text("CREATE INDEX ix_feedback_inputs_key ON feedback (inputs_key)"))
    # Nothing reads audit records by key any more; the index only cost every audit insert.
    conn.execute(text("DROP INDEX ix_audit_record_inputs_key"))
    conn.execute(
        text(
            "UPDATE feedback SET inputs_key = (SELECT audit_record.inputs_key FROM audit_record "
            "WHERE audit_record.card_uuid = feedback.card_uuid)"
        )
    )


def _v4_audit_software_version(conn: Connection) -> None:
    """Version 4: the software version (``cds_service.__version__``) on audit records (issue 16).

    Rows written before stay NULL: which release wrote them is not known, and the report says so.
    """
    conn.execute(text("ALTER TABLE audit_record ADD COLUMN software_version VARCHAR(32)"))


def _v5_shared_state(conn: Connection) -> None:
    """Version 5: the JWT replay cache and the SMART sessions, moved here from a per-instance SQLite
    file so that every replica on the database shares them (issue 14). Frozen definitions."""
    md = MetaData()
    Table(
        "replay_seen",
        md,
        Column("pair", LargeBinary(32), primary_key=True),
        Column("until", Float, nullable=False),
        Index("ix_replay_seen_until", "until"),
        sqlite_with_rowid=False,  # the key is the pair: one b-tree, not a rowid table and an index
    )
    Table(
        "smart_session",
        md,
        Column("id", LargeBinary(32), primary_key=True),
        Column("key_id", LargeBinary(16), nullable=False),
        Column("last_seen", Float, nullable=False),
        Column("signed_in", Boolean(), nullable=False),
        Index("ix_smart_session_last_seen", "last_seen"),
        Index("ix_smart_session_pool", "signed_in", "last_seen"),
    )

    def session() -> Column[bytes]:
        return Column(
            "session",
            LargeBinary(32),
            ForeignKey("smart_session.id", ondelete="CASCADE"),
            nullable=False,
        )

    Table(
        "smart_pending",
        md,
        Column("seq", id_type(), primary_key=True, autoincrement=True),
        session(),
        Column("state", LargeBinary(32), nullable=False),
        Column("sealed", LargeBinary(), nullable=False),
        UniqueConstraint("session", "state", name="uq_smart_pending_session_state"),
    )
    Table(
        "smart_used_state",
        md,
        Column("seq", id_type(), primary_key=True, autoincrement=True),
        session(),
        Column("state", LargeBinary(32), nullable=False),
        UniqueConstraint("session", "state", name="uq_smart_used_state_session_state"),
    )
    Table(
        "smart_launch",
        md,
        Column("seq", id_type(), primary_key=True, autoincrement=True),
        session(),
        Column("ref", String(64), nullable=False),
        Column("sealed", LargeBinary(), nullable=False),
        Column("lease_owner", LargeBinary(16)),
        Column("lease_until", Float, nullable=False),
        UniqueConstraint("session", "ref", name="uq_smart_launch_session_ref"),
    )
    md.create_all(conn, checkfirst=False)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "audit records and feedback", _v1_audit_and_feedback),
    Migration(2, "inputs key on audit records", _v2_audit_inputs_key),
    Migration(3, "inputs key on feedback", _v3_feedback_inputs_key),
    Migration(4, "software version on audit records", _v4_audit_software_version),
    Migration(5, "JWT replay cache and SMART sessions", _v5_shared_state),
)
#: The schema version this code reads and writes.
HEAD = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The newest applied migration; 0 when the database has no schema yet."""
    if not inspect(conn).has_table(schema_version.name):
        return 0
    version = conn.execute(select(func.max(schema_version.c.version))).scalar()
    return int(version or 0)


def check_schema(engine: Engine, where: str) -> int:
    """Refuse a database whose schema is not exactly :data:`HEAD` (start-up check)."""
    with engine.connect() as conn:
        version = current_version(conn)
    if version == HEAD:
        return version
    if version == 0:
        raise SchemaNotInitialised(
            f"the database {where} has no schema yet; run 'hfs-cds db upgrade'"
        )
    if version < HEAD:
        raise SchemaOutdated(
            f"the database {where} is at schema version {version}, this release needs {HEAD}; "
            "run 'hfs-cds db upgrade'"
        )
    raise SchemaTooNew(
        f"the database {where} is at schema version {version}, newer than this release "
        f"understands ({HEAD}); it was migrated by a newer hfs-cds. Deploy that release (or "
        "newer) instead; this one will not write to it"
    )


def upgrade(engine: Engine, target: int | None = None) -> list[Migration]:
    """Apply the pending migrations up to ``target`` (default :data:`HEAD`); return those applied.

    Each migration runs in its own transaction under a lock and re-reads the version inside it, so
    concurrent upgraders neither fail nor apply a step twice.
    """
    goal = HEAD if target is None else target
    if not 0 <= goal <= HEAD:
        raise ValueError(f"no schema version {goal} (this release knows 1 to {HEAD})")
    applied: list[Migration] = []
    for migration in MIGRATIONS:
        if migration.version > goal:
            break
        with engine.begin() as conn:
            _lock(conn)
            version = current_version(conn)
            if version > HEAD:
                raise SchemaTooNew(
                    f"the database is at schema version {version}, newer than this release "
                    f"understands ({HEAD}); nothing was changed"
                )
            if version >= migration.version:
                continue
            if version == 0:
                schema_version.create(conn, checkfirst=True)
            migration.apply(conn)
            conn.execute(
                schema_version.insert().values(
                    version=migration.version, name=migration.name, applied_at=datetime.now(UTC)
                )
            )
        log.info("applied schema migration %d: %s", migration.version, migration.name)
        applied.append(migration)
    return applied


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    # SQLite: the store's engine opens every transaction with BEGIN IMMEDIATE, which already
    # holds the database's single write lock.
