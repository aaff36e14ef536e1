"""The store's exceptions. Messages are safe to print: no PHI, no password from a URL."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The feedback and audit store cannot be used as configured."""


class UnsupportedDatabase(StoreError):
    """``CDS_DATABASE_URL`` names a backend other than SQLite or PostgreSQL, or is malformed."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or opened (server down, wrong credentials, permissions)."""


class SchemaError(StoreError):
    """The database schema does not match this version of the code."""


class SchemaNotInitialised(SchemaError):
    """No schema yet: run ``hfs-cds db upgrade``."""


class SchemaOutdated(SchemaError):
    """Migrations are pending: run ``hfs-cds db upgrade``."""


class SchemaTooNew(SchemaError):
    """The database was migrated by a newer release; this code must not write to it."""
