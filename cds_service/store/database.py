"""The store: one SQLAlchemy Core code path for SQLite (embedded default) and PostgreSQL.

Dialect differences are confined to this module and :mod:`.migrations`: how a connection is set
up (SQLite: WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``), and which ``INSERT … ON CONFLICT DO
NOTHING`` construct to use (both backends have one; SQLAlchemy exposes it per dialect).

Use :func:`open_store` in the app (it refuses a schema that is missing, outdated or newer than the
code) and :func:`open_engine` + :func:`~cds_service.store.migrations.upgrade` to migrate. Nothing
here creates tables implicitly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from psycopg.errors import ReadOnlySqlTransaction
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Table,
    create_engine,
    delete,
    event,
    exists,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.sql.dml import Insert

from cds_service.config import StoreSettings
from cds_service.sqlite_wal import switch_to_wal
from cds_service.store.audit import AuditRecord
from cds_service.store.errors import (
    SchemaNotInitialised,
    StoreError,
    StoreUnavailable,
    UnsupportedDatabase,
)
from cds_service.store.feedback import (
    CardFeedbackFull,
    CardNotIssued,
    FeedbackEntry,
    FeedbackPolicy,
    FeedbackRateLimited,
)
from cds_service.store.migrations import check_schema
from cds_service.store.schema import audit_record, feedback

log = logging.getLogger(__name__)

#: How long a SQLite writer waits for the write lock before giving up (seconds).
SQLITE_BUSY_TIMEOUT = 30.0
#: Rows deleted per transaction by :meth:`Store.purge` (keeps SQLite's write lock short).
PURGE_BATCH = 5000
#: How long a write to the ephemeral state waits for SQLite's write lock (a hook call waits on it).
STATE_BUSY_TIMEOUT = 5.0
#: Execution option selecting how a SQLite transaction begins (``IMMEDIATE`` unless told).
SQLITE_BEGIN = "hfs_sqlite_begin"


def normalise_url(raw: str) -> URL:
    """Parse a database URL; plain ``postgresql://`` / ``postgres://`` mean psycopg 3."""
    text = raw.strip()
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://") :]
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise UnsupportedDatabase(
            "CDS_DATABASE_URL is not a database URL (expected postgresql://… or sqlite:///…)"
        ) from exc
    if url.drivername in ("postgresql", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if not url.database or url.database == ":memory:":
            raise UnsupportedDatabase(
                "an in-memory SQLite database cannot be shared between threads or processes; "
                "give a file path (sqlite:///path/hfs-cds.sqlite3)"
            )
        return url.set(drivername="sqlite+pysqlite")
    raise UnsupportedDatabase(
        f"unsupported database '{url.drivername}': use PostgreSQL (postgresql://…) or SQLite "
        "(sqlite:///path)"
    )


def describe(url: URL) -> str:
    """The URL for messages and logs, password hidden."""
    return url.render_as_string(hide_password=True)


def open_engine(url: str | URL, *, create_directory: bool = False) -> Engine:
    """An engine configured for the store. ``create_directory`` makes a SQLite file's folder."""
    parsed = url if isinstance(url, URL) else normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        if create_directory:
            _create_private_file(Path(parsed.database).expanduser())
        engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
            pool_size=8,
            max_overflow=16,
            **_JSON_CODEC,
        )
        _configure_sqlite(engine, durable=True, busy_timeout=SQLITE_BUSY_TIMEOUT)
        return engine
    return _renew_read_only_sessions(
        create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            connect_args={"connect_timeout": 10, "application_name": "hfs-cds"},
            **_JSON_CODEC,
        )
    )


def open_state_engine(url: str | URL) -> Engine:
    """An engine for the ephemeral shared state (JWT replay cache, SMART sessions) on the store's
    database: its own pool, and commits that do not wait for the disk.

    A crash of the host (SQLite) or of the PostgreSQL server may lose the last few writes, as a
    restart lost the old per-instance state; the database stays consistent, and a committed row is
    visible to every other connection at once (PostgreSQL's ``synchronous_commit = off`` delays
    only the flush), so a replica still refuses a token another replica has just accepted. Waiting
    for an fsync on every authenticated hook call would cost more than the whole check. The
    shorter busy timeout bounds how long a hook call waits for SQLite's write lock (then 503).
    """
    parsed = url if isinstance(url, URL) else normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            connect_args={"timeout": STATE_BUSY_TIMEOUT, "check_same_thread": False},
            pool_size=8,
            max_overflow=16,
        )
        _configure_sqlite(engine, durable=False, busy_timeout=STATE_BUSY_TIMEOUT)
        return engine
    # No pre-ping: it would double the round trips of every replay check. A connection the server
    # dropped fails one call (503, retried by the EHR) and SQLAlchemy then renews the whole pool.
    return _renew_read_only_sessions(
        create_engine(
            parsed,
            pool_size=5,
            max_overflow=10,
            connect_args={
                # Short: while the server is unreachable one hook call in a while waits for this
                # before the replay check falls back to memory (store/replay_fallback.py).
                "connect_timeout": 3,
                "application_name": "hfs-cds state",
                "options": "-c synchronous_commit=off",
            },
        )
    )


def _renew_read_only_sessions(engine: Engine) -> Engine:
    """A PostgreSQL session that says it is read-only (the database was switched to read-only, or
    a failover left the pool on a standby) is dropped like a broken connection: the pool opens a
    new one, which sees the database as it is now. Kept, it would refuse every write long after
    the database took writes again."""

    @event.listens_for(engine, "handle_error")
    def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
        if isinstance(context.original_exception, ReadOnlySqlTransaction):
            context.is_disconnect = True

    return engine


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


# The JSON columns (risks, inputs, ...) are encoded by the audit writer's thread while request
# threads wait for the GIL: orjson does it several times faster than the json module.
_JSON_CODEC: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


def _create_private_file(path: Path) -> None:
    """Create the SQLite file (and its folder) readable by the service's user only.

    The audit records hold FHIR patient ids; SQLite gives its -wal and -shm files the database
    file's mode. An existing file keeps the mode its operator gave it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


def _configure_sqlite(engine: Engine, *, durable: bool, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (the documented
        # recipe for pysqlite), and make the file a WAL database; commits are durable (FULL) for
        # audit and feedback, and reach the disk at checkpoints (NORMAL) for ephemeral state.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            mode = switch_to_wal(cursor, busy_timeout)
            if mode.lower() != "wal":
                raise UnsupportedDatabase(
                    "SQLite could not switch the database to WAL mode (is it on a network "
                    "file system?); use a local disk or PostgreSQL"
                )
            cursor.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            # SMART sessions' rows go with their session (ON DELETE CASCADE); off by default.
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so a transaction that reads and then writes
        # waits for its turn instead of failing with SQLITE_BUSY half-way. Read-only callers
        # (the report) ask for DEFERRED through the execution option; a connection that runs one
        # statement at a time (the replay check, see single_statements) asks for NONE: SQLite
        # makes each statement atomic by itself, and the commit is then a no-op.
        mode = conn.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
        if mode != "NONE":
            conn.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")


def single_statements(engine: Engine) -> Engine:
    """The engine's pool, for connections on which each statement commits by itself (no BEGIN and
    COMMIT around it: a round trip each on PostgreSQL, two statements each on SQLite)."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{SQLITE_BEGIN: "NONE"})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def insert_ignoring_duplicates(conn: Connection, table: Table, unique: Column[Any]) -> Insert:
    """``INSERT … ON CONFLICT (unique) DO NOTHING`` for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[unique])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[unique])


#: One feedback action as :meth:`Store.feedback_actions` reads it:
#: ``(id, inputs_key, issuer, tenant, acted_at)`` with ``acted_at = min(outcome_at, received_at)``.
FeedbackAction = tuple[int, str, str | None, str | None, datetime]


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What :meth:`Store.save_feedback` did with one POST."""

    stored: int  # new entries written
    duplicates: int  # repeats of entries already stored (ignored)
    unknown_cards: int  # entries (new or repeated) naming a card with no audit record

    @property
    def received(self) -> int:
        return self.stored + self.duplicates


@dataclass(frozen=True, slots=True)
class PurgeResult:
    before: datetime
    audit_records: int
    feedback: int


class Store:
    """Feedback and audit persistence over one engine (thread-safe; share one per process)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # A server that forks workers after start-up (gunicorn --preload) must not share pooled
        # connections between processes: the child drops the parent's pool without closing it.
        ref = weakref.ref(self)

        def forget_pool() -> None:
            store = ref()
            if store is not None:
                store.engine.dispose(close=False)

        os.register_at_fork(after_in_child=forget_pool)

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise unavailable(exc, self.describe()) from exc

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def describe(self) -> str:
        return describe(self.engine.url)

    def close(self) -> None:
        self.engine.dispose()

    # -- feedback: synchronous, durable when this returns ------------------------------------------

    def save_feedback(
        self,
        service_id: str,
        entries: Sequence[FeedbackEntry],
        *,
        received_at: datetime | None = None,
        issuer: str | None = None,
        tenant: str | None = None,
        policy: FeedbackPolicy | None = None,
    ) -> FeedbackResult:
        """Store the entries of one POST in one transaction; repeats are ignored, not errors.

        Returns after the commit, so the caller may answer 200. Without a ``policy``, entries
        naming a card the audit trail does not know are stored with ``card_known = false``. With
        one (the feedback endpoint passes
        :data:`~cds_service.store.feedback.DEFAULT_POLICY`), the POST is refused as a whole,
        nothing stored, by a :class:`~cds_service.store.feedback.FeedbackRefused` subclass: an
        entry naming a card not returned by ``service_id`` to this issuer and tenant, a card past
        its most entries, or an issuer past its rate (checked in the same transaction as the
        insert, so on SQLite exactly; PostgreSQL's concurrent POSTs may pass the limits by what
        they insert at the same moment). Raises
        :class:`~cds_service.store.errors.StoreUnavailable` when the database cannot be used and
        :class:`~cds_service.store.errors.StoreError` on any other database failure (answer 503:
        nothing was stored, and the EHR may send the same feedback again).
        """
        try:
            return self._save_feedback(service_id, entries, received_at, issuer, tenant, policy)
        except OperationalError as exc:
            raise unavailable(exc, self.describe()) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"feedback could not be stored: {type(exc).__name__}") from exc

    def _save_feedback(
        self,
        service_id: str,
        entries: Sequence[FeedbackEntry],
        received_at: datetime | None,
        issuer: str | None,
        tenant: str | None,
        policy: FeedbackPolicy | None = None,
    ) -> FeedbackResult:
        now = received_at or datetime.now(UTC)
        issuer, tenant = (issuer[:255] if issuer else None), (tenant[:255] if tenant else None)
        stored = duplicates = unknown = 0
        new_per_card: Counter[str] = Counter()
        with self.engine.begin() as conn:
            if policy is not None and policy.issued_cards_only:
                _refuse_cards_not_issued(conn, service_id, entries, issuer, tenant)
            insert = insert_ignoring_duplicates(conn, feedback, feedback.c.natural_key).returning(
                feedback.c.id
            )
            for entry in entries:
                known = exists().where(audit_record.c.card_uuid == entry.card)
                # NULL when the card is unknown (or its audit record not written yet): such
                # feedback never silences a card, which errs on the side of showing it.
                key = (
                    select(audit_record.c.inputs_key)
                    .where(audit_record.c.card_uuid == entry.card)
                    .scalar_subquery()
                )
                result = conn.execute(
                    insert.values(
                        natural_key=entry.natural_key(service_id),
                        received_at=now,
                        service_id=service_id,
                        card_uuid=entry.card,
                        card_known=known,
                        outcome=entry.outcome.value,
                        outcome_at=entry.outcome_at,
                        accepted_suggestions=list(entry.accepted_suggestions),
                        reason_system=entry.reason.system if entry.reason else None,
                        reason_code=entry.reason.code if entry.reason else None,
                        has_comment=entry.has_comment,
                        comment_length=entry.comment_length,
                        issuer=issuer,
                        tenant=tenant,
                        inputs_key=key,
                    )
                )
                # RETURNING gives a row only when the entry was new (rowcount is unreliable here:
                # PostgreSQL reports an implicit RETURNING, SQLite an executemany, differently).
                if result.first() is not None:
                    stored += 1
                    new_per_card[entry.card] += 1
                else:
                    duplicates += 1
            if policy is not None and stored:
                # Counted after the inserts, inside the transaction: raising rolls them back.
                _refuse_past_limits(conn, policy, entries, new_per_card, issuer, now)
            cards = {e.card for e in entries}
            known_cards = set(
                conn.execute(
                    select(audit_record.c.card_uuid).where(audit_record.c.card_uuid.in_(cards))
                ).scalars()
            )
            unknown = sum(1 for e in entries if e.card not in known_cards)
        return FeedbackResult(stored=stored, duplicates=duplicates, unknown_cards=unknown)

    def feedback_actions(
        self, after_id: int, received_since: datetime | None = None
    ) -> list[FeedbackAction]:
        """Feedback rows that can silence a card: ``(id, inputs_key, issuer, tenant, acted_at)``.

        Rows with ``id > after_id`` and an inputs key (feedback on an unknown card has none and
        never silences), received at or after ``received_since`` when given, in id order. An action
        counts from the earlier of the EHR's ``outcomeTimestamp`` and our receipt time
        (``acted_at``), so a clock running ahead in the EHR cannot stretch the silence. Read by
        :class:`~cds_service.store.recent_actions.RecentActions` off the hook's hot path (at most
        once a second per process). Raises :class:`~cds_service.store.errors.StoreError` on any
        database failure, naming only the exception class.
        """
        f = feedback
        query = (
            select(f.c.id, f.c.inputs_key, f.c.issuer, f.c.tenant, f.c.outcome_at, f.c.received_at)
            .where(f.c.id > after_id, f.c.inputs_key.is_not(None))
            .order_by(f.c.id)
        )
        if received_since is not None:
            query = query.where(f.c.received_at >= received_since)
        try:
            with self.engine.connect() as conn:
                # A read: never take SQLite's write lock (the audit writer holds it often).
                conn.execution_options(**{SQLITE_BEGIN: "DEFERRED"})
                rows = conn.execute(query).all()
        except OperationalError as exc:  # the class only: a driver's message may quote values
            raise StoreUnavailable(f"feedback could not be read: {type(exc).__name__}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"feedback could not be read: {type(exc).__name__}") from exc
        return [
            (row_id, key, issuer, tenant, min(outcome_at, received_at))
            for row_id, key, issuer, tenant, outcome_at, received_at in rows
        ]

    # -- audit: called in batches by the AuditWriter's thread ------------------------------------

    def write_audit(self, records: Iterable[AuditRecord]) -> None:
        """Insert audit records in one transaction; a record whose card uuid is stored is skipped.

        Skipping repeats makes a retried batch harmless when the first attempt did commit.
        """
        rows = [r.to_row() for r in records]
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(
                insert_ignoring_duplicates(conn, audit_record, audit_record.c.card_uuid), rows
            )

    # -- retention -------------------------------------------------------------------------------

    def purge(self, before: datetime, *, batch: int = PURGE_BATCH) -> PurgeResult:
        """Delete audit records made, and feedback received, before ``before``, in small batches."""
        return PurgeResult(
            before=before,
            audit_records=self._delete_before(
                audit_record, audit_record.c.recorded_at, before, batch
            ),
            feedback=self._delete_before(feedback, feedback.c.received_at, before, batch),
        )

    def _delete_before(self, table: Table, column: Any, before: datetime, batch: int) -> int:
        total = 0
        while True:
            ids = select(table.c.id).where(column < before).order_by(table.c.id).limit(batch)
            with self.engine.begin() as conn:
                deleted = conn.execute(
                    delete(table).where(table.c.id.in_(ids.scalar_subquery()))
                ).rowcount
            total += deleted
            if deleted < batch:
                return total


def _refuse_cards_not_issued(
    conn: Connection,
    service_id: str,
    entries: Sequence[FeedbackEntry],
    issuer: str | None,
    tenant: str | None,
) -> None:
    """Raise :class:`CardNotIssued` for the first entry whose card has no audit record of this
    service, issuer and tenant (issuer and tenant as stored: clipped, empty as NULL)."""
    a = audit_record
    issued = set(
        conn.execute(
            select(a.c.card_uuid).where(
                a.c.card_uuid.in_({e.card for e in entries}),
                a.c.service_id == service_id,
                a.c.issuer.is_not_distinct_from(issuer),
                a.c.tenant.is_not_distinct_from(tenant),
            )
        ).scalars()
    )
    for i, entry in enumerate(entries):
        if entry.card not in issued:
            raise CardNotIssued(i)


def _refuse_past_limits(
    conn: Connection,
    policy: FeedbackPolicy,
    entries: Sequence[FeedbackEntry],
    new_per_card: Counter[str],
    issuer: str | None,
    now: datetime,
) -> None:
    """Raise when the rows just inserted take a card past its most entries, or the issuer past its
    rate (cards that got nothing new are not judged: a resend is always answered)."""
    f = feedback
    per_card = {
        card: int(n)
        for card, n in conn.execute(
            select(f.c.card_uuid, func.count())
            .where(f.c.card_uuid.in_(set(new_per_card)))
            .group_by(f.c.card_uuid)
        )
    }
    for i, entry in enumerate(entries):
        if entry.card in new_per_card and per_card.get(entry.card, 0) > policy.max_per_card:
            raise CardFeedbackFull(i, policy.max_per_card)
    since = now - policy.window
    count, oldest = conn.execute(
        select(func.count(), func.min(f.c.received_at)).where(
            f.c.received_at >= since, f.c.issuer.is_not_distinct_from(issuer)
        )
    ).one()
    if count > policy.max_per_issuer:
        # When the oldest entry in the window leaves it (a hint: a big POST may need longer).
        wait = (oldest + policy.window - now).total_seconds() if oldest is not None else 1.0
        raise FeedbackRateLimited(policy.max_per_issuer, policy.window, max(1, math.ceil(wait)))


def database_url(settings: StoreSettings | None = None) -> str:
    """The configured URL (``CDS_DATABASE_URL`` or the instance SQLite file)."""
    return (settings or StoreSettings()).resolved_url()


def open_store(url: str | URL) -> Store:
    """Open the store for the app or a command; refuse a schema that does not match the code.

    Raises only :class:`~cds_service.store.errors.StoreError` subclasses: ``SchemaError`` (not
    initialised, outdated, or newer than this release), ``UnsupportedDatabase`` and
    ``StoreUnavailable`` (cannot connect). A SQLite file that does not exist is reported, not
    created.
    """
    parsed = url if isinstance(url, URL) else normalise_url(url)
    where = describe(parsed)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        if not Path(parsed.database).expanduser().exists():
            raise SchemaNotInitialised(
                f"no database at {parsed.database}; run 'hfs-cds db upgrade' to create it"
            )
    engine = open_engine(parsed)
    try:
        check_schema(engine, where)
    except OperationalError as exc:
        engine.dispose()
        raise unavailable(exc, where) from exc
    except BaseException:
        engine.dispose()
        raise
    return Store(engine)


def unavailable(exc: OperationalError, where: str) -> StoreUnavailable:
    """A connection failure as a one-line error: the driver's first line, never SQL or values."""
    lines = str(exc.orig).strip().splitlines()
    return StoreUnavailable(
        f"cannot use the database {where}: {lines[0] if lines else type(exc.orig).__name__}"
    )
