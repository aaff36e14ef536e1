"""Feedback and audit persistence (SQLAlchemy Core; SQLite by default, PostgreSQL for replicas).

What the web layer calls::

    store = open_store(database_url(load_settings().store))                  # at start-up
    writer = AuditWriter(store)                                             # one per process
    writer.submit(audit_record_from(assessment, card, service_id=..., hook=..., hook_instance=...))
    result = store.save_feedback(service_id, parse_feedback(body), issuer=..., tenant=...)
    recent = RecentActions(store, period_days=card.alerting.suppress_after_feedback_days)
    recent.force_refresh(now)                                   # after save_feedback
    recent.acted_on_since(inputs_key(assessment, ...), since, issuer=..., tenant=..., now=...)
    writer.close(); store.close()                                           # at shutdown

``hfs-cds db upgrade`` creates the schema; :func:`open_store` refuses a database whose schema is
missing, outdated or newer than this code.
"""

from __future__ import annotations

from cds_service.store.audit import AuditInput, AuditReason, AuditRecord, audit_record_from
from cds_service.store.database import (
    FeedbackResult,
    PurgeResult,
    Store,
    database_url,
    open_engine,
    open_store,
)
from cds_service.store.errors import (
    SchemaError,
    SchemaNotInitialised,
    SchemaOutdated,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
    UnsupportedDatabase,
)
from cds_service.store.inputs_key import inputs_key
from cds_service.store.migrations import HEAD, upgrade
from cds_service.store.recent_actions import RecentActions
from cds_service.store.writer import AuditWriter, WriterStats

__all__ = [
    "HEAD",
    "AuditInput",
    "AuditReason",
    "AuditRecord",
    "AuditWriter",
    "FeedbackResult",
    "PurgeResult",
    "RecentActions",
    "SchemaError",
    "SchemaNotInitialised",
    "SchemaOutdated",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UnsupportedDatabase",
    "WriterStats",
    "audit_record_from",
    "database_url",
    "inputs_key",
    "open_engine",
    "open_store",
    "upgrade",
]
