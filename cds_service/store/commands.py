"""``hfs-cds db upgrade|purge|status`` and ``hfs-cds report``: the feedback and audit store.

SQLAlchemy and the store load only when one of these commands runs, so ``hfs-cds score`` stays as
fast as before. Problems print as one line (exit status 2), the database URL's password hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Any

import click

from cds_service.cli_support import (
    OUTPUT_FILE,
    Choice,
    CliError,
    IsoMoment,
    language_option,
    locale_of,
    write_text,
)
from cds_service.config import StoreSettings, load_settings


def _store_command(command: Callable[..., int]) -> Callable[..., int]:
    """Adds ``--database-url``; the command gets the store settings and the URL. Connection and
    driver problems become a one-line :class:`StoreError`, never SQL or values."""

    @click.option(
        "--database-url",
        metavar="URL",
        show_default="CDS_DATABASE_URL, else the SQLite file in CDS_INSTANCE_PATH",
        help="postgresql://… or sqlite:///path",
    )
    @wraps(command)
    def run(database_url: str | None, **kwargs: Any) -> int:
        from sqlalchemy.exc import OperationalError, SQLAlchemyError

        from cds_service.store.database import database_url as configured
        from cds_service.store.database import describe, normalise_url, unavailable
        from cds_service.store.errors import StoreError

        settings = load_settings().store
        url = database_url or configured(settings)
        where = describe(normalise_url(url))  # for messages: the password hidden
        try:
            return command(settings, url, **kwargs)
        except OperationalError as exc:  # cannot connect, locked, read-only…: the driver says why
            raise unavailable(exc, where) from None
        except SQLAlchemyError as exc:  # anything else: the class only
            raise StoreError(f"database error: {type(exc).__name__}") from None

    return run


@click.group()
def db() -> None:
    """The feedback and audit database: upgrade, purge, status."""


@db.command()
@_store_command
def upgrade(settings: StoreSettings, url: str) -> int:
    """Create the schema or apply pending migrations (run before serving)."""
    from cds_service.store.database import describe, normalise_url, open_engine
    from cds_service.store.migrations import HEAD, current_version, upgrade

    parsed = normalise_url(url)
    engine = open_engine(parsed, create_directory=True)
    try:
        with engine.connect() as conn:
            before = current_version(conn)
        applied = upgrade(engine)
    finally:
        engine.dispose()
    where = describe(parsed)
    if not applied:
        print(f"{where}: schema already at version {before} (this release: {HEAD})")
    for migration in applied:
        print(f"{where}: applied migration {migration.version}: {migration.name}")
    return 0


@db.command()
@_store_command
def status(settings: StoreSettings, url: str) -> int:
    """Print the schema version; exit 1 unless it matches this release."""
    from cds_service.store.database import describe, normalise_url, open_engine
    from cds_service.store.migrations import HEAD, current_version

    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).exists():
        print(f"{describe(parsed)}: no database yet (this release: schema version {HEAD})")
        return 1
    engine = open_engine(parsed)
    try:
        with engine.connect() as conn:
            version = current_version(conn)
    finally:
        engine.dispose()
    print(f"{describe(parsed)}: schema version {version} (this release: {HEAD})")
    return 0 if version == HEAD else 1


@db.command()
@click.option(
    "--before",
    type=IsoMoment(utc=True),
    show_default="now minus CDS_AUDIT_RETENTION_DAYS",
    help="delete what was recorded before this ISO 8601 date or date-time (UTC unless it says "
    "otherwise)",
)
@_store_command
def purge(settings: StoreSettings, url: str, before: datetime | None) -> int:
    """Delete audit records and feedback older than the retention period."""
    from cds_service.store.database import open_store

    now = datetime.now(UTC)
    if before is None:
        before = now - timedelta(days=settings.audit_retention_days)
    elif before > now:
        raise CliError("--before is in the future; that would delete every record")
    store = open_store(url)
    try:
        result = store.purge(before)
    finally:
        store.close()
    print(
        f"deleted {result.audit_records} audit record(s) and {result.feedback} feedback "
        f"entr{'y' if result.feedback == 1 else 'ies'} from before {before.isoformat()}"
    )
    return 0


@click.command()
@click.option("--since", type=IsoMoment(utc=True), help="cards shown from this date (UTC)")
@click.option("--until", type=IsoMoment(utc=True), help="cards shown before this date (UTC)")
@click.option(
    "--format",
    "output_format",
    type=Choice(("text", "json", "html")),
    default="text",
    help="the report's format",
)
@click.option(
    "--output", "-o", type=OUTPUT_FILE, show_default="stdout", help="write the report to this file"
)
@language_option("the text and html report")
@_store_command
def report(
    settings: StoreSettings,
    url: str,
    since: datetime | None,
    until: datetime | None,
    output_format: str,
    output: Path | None,
    language: str,
) -> int:
    """Cards by tier and model version, acceptance and overrides, time to feedback."""
    from cds_service.store.database import open_store
    from cds_service.store.report import build_report, render_html, render_json, render_text

    locale = locale_of(language)
    store = open_store(url)
    try:
        # JSON is for machines: its labels stay English whatever --lang says.
        labels = _labels("en" if output_format == "json" else locale)
        built = build_report(store, since=since, until=until, labels=labels)
    finally:
        store.close()
    if output_format == "json":
        text = render_json(built)
    else:
        text = (render_html if output_format == "html" else render_text)(built, locale)
    if output:
        write_text(output, text + ("" if text.endswith("\n") else "\n"))
    else:
        print(text)
    return 0


def _labels(locale: Any = "en") -> Any:
    """Tier order and labels from the model card in use; display names of our override reasons."""
    from cds_service.model import load_model_card
    from cds_service.store.feedback import OVERRIDE_REASON_SYSTEM, OVERRIDE_REASONS
    from cds_service.store.report import ReportLabels

    card = load_model_card(load_settings().model_card or None)
    return ReportLabels(
        tier_order=tuple(t.id for t in card.tiers),
        tier_labels={t.id: card.texts(locale).tier(t).label for t in card.tiers},
        reason_displays={
            (OVERRIDE_REASON_SYSTEM, code): display for code, display in OVERRIDE_REASONS
        },
    )


COMMANDS = (db, report)
