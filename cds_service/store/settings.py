"""Store settings from the environment (``CDS_*``, like :mod:`cds_service.config`).

``CDS_DATABASE_URL``
    SQLAlchemy URL. ``postgresql://…`` (or ``postgres://…``) means PostgreSQL through psycopg 3;
    ``sqlite:///path`` a SQLite file. Empty: the embedded default, a SQLite file in the instance
    directory.
``CDS_INSTANCE_PATH``
    The instance directory for the embedded database (default ``instance``, relative to the
    working directory).
``CDS_AUDIT_RETENTION_DAYS``
    How long audit records and feedback are kept; ``hfs-cds db purge`` deletes older rows
    (default 400 days: a year of follow-up plus a quarter for governance review).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cds_service.config import ENV_PREFIX, ConfigError

DEFAULT_INSTANCE_PATH = "instance"
DEFAULT_DATABASE_FILE = "hfs-cds.sqlite3"
DEFAULT_RETENTION_DAYS = 400


@dataclass(frozen=True, slots=True)
class StoreSettings:
    database_url: str = ""
    instance_path: str = DEFAULT_INSTANCE_PATH
    audit_retention_days: int = DEFAULT_RETENTION_DAYS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StoreSettings:
        url = environ.get(f"{ENV_PREFIX}DATABASE_URL", "").strip()
        instance = environ.get(f"{ENV_PREFIX}INSTANCE_PATH", "").strip() or DEFAULT_INSTANCE_PATH
        raw_days = environ.get(f"{ENV_PREFIX}AUDIT_RETENTION_DAYS", "").strip()
        days = DEFAULT_RETENTION_DAYS
        if raw_days:
            try:
                days = int(raw_days)
            except ValueError:
                days = -1
            if days < 1:
                raise ConfigError(
                    f"{ENV_PREFIX}AUDIT_RETENTION_DAYS: cannot use {raw_days!r} "
                    "(a whole number of days, at least 1)"
                )
        return cls(database_url=url, instance_path=instance, audit_retention_days=days)

    def resolved_url(self) -> str:
        """The database URL to use: ``database_url``, else the SQLite file in the instance path."""
        if self.database_url:
            return self.database_url
        path = Path(self.instance_path).expanduser().absolute() / DEFAULT_DATABASE_FILE
        return f"sqlite:///{path}"
