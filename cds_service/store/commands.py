"""``hfs-cds db upgrade|purge|status`` and ``hfs-cds report``, registered on the main CLI parser.

``cds_service.cli`` calls :func:`register` with its sub-parsers. SQLAlchemy and the store load
only when one of these commands runs, so ``hfs-cds score`` stays as fast as before.
Every command takes ``--database-url``; without it, ``CDS_DATABASE_URL``, else the SQLite file in
``CDS_INSTANCE_PATH``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Any

Command = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``db`` (``upgrade``, ``purge``, ``status``) and ``report`` to ``hfs-cds``."""
    db = subparsers.add_parser("db", help="the feedback and audit database: upgrade, purge, status")
    actions = db.add_subparsers(required=True, metavar="ACTION")

    upgrade = actions.add_parser(
        "upgrade", help="create the schema or apply pending migrations (run before serving)"
    )
    _database_option(upgrade)
    upgrade.set_defaults(run=_upgrade)

    purge = actions.add_parser(
        "purge", help="delete audit records and feedback older than the retention period"
    )
    purge.add_argument(
        "--before",
        metavar="DATE",
        help="delete what was recorded before this ISO 8601 date or date-time (UTC unless it "
        "says otherwise); default: now minus CDS_AUDIT_RETENTION_DAYS",
    )
    _database_option(purge)
    purge.set_defaults(run=_purge)

    status = actions.add_parser(
        "status", help="print the schema version; exit 1 unless it matches this release"
    )
    _database_option(status)
    status.set_defaults(run=_status)

    report = subparsers.add_parser(
        "report", help="cards by tier and model version, acceptance and overrides, time to feedback"
    )
    report.add_argument("--since", metavar="DATE", help="cards shown from this date (UTC)")
    report.add_argument("--until", metavar="DATE", help="cards shown before this date (UTC)")
    report.add_argument("--format", choices=("text", "json", "html"), default="text")
    report.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")
    _database_option(report)
    report.set_defaults(run=_report)


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="postgresql://… or sqlite:///path (default: CDS_DATABASE_URL, else the SQLite file "
        "in CDS_INSTANCE_PATH)",
    )


def _guarded(command: Command) -> Command:
    """Print store, configuration and connection problems as one line; exit status 2."""

    @wraps(command)
    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import OperationalError, SQLAlchemyError

        from cds_service.config import ConfigError
        from cds_service.store.database import unavailable
        from cds_service.store.errors import StoreError

        try:
            return command(args)
        except (StoreError, ConfigError, _DateError) as exc:
            print(f"hfs-cds: {exc}", file=sys.stderr)
        except OperationalError as exc:  # cannot connect, locked, read-only…: the driver says why
            where = getattr(args, "database", "(configured)")
            print(f"hfs-cds: {unavailable(exc, where).args[0]}", file=sys.stderr)
        except SQLAlchemyError as exc:  # anything else: the class only, never SQL or values
            print(f"hfs-cds: database error: {type(exc).__name__}", file=sys.stderr)
        return 2

    return run


class _DateError(ValueError):
    pass


def _settings_url(args: argparse.Namespace) -> tuple[Any, str]:
    from cds_service.store.database import database_url, describe, normalise_url
    from cds_service.store.settings import StoreSettings

    settings = StoreSettings.from_env(os.environ)
    url = args.database_url or database_url(settings)
    args.database = describe(normalise_url(url))  # for messages: the password hidden
    return settings, url


@_guarded
def _upgrade(args: argparse.Namespace) -> int:
    from cds_service.store.database import describe, normalise_url, open_engine
    from cds_service.store.migrations import HEAD, current_version, upgrade

    _, url = _settings_url(args)
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


@_guarded
def _status(args: argparse.Namespace) -> int:
    from cds_service.store.database import describe, normalise_url, open_engine
    from cds_service.store.migrations import HEAD, current_version

    _, url = _settings_url(args)
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


@_guarded
def _purge(args: argparse.Namespace) -> int:
    from cds_service.store.database import open_store

    settings, url = _settings_url(args)
    now = datetime.now(UTC)
    if args.before:
        before = _parse_date(args.before, "--before")
        if before > now:
            raise _DateError("--before is in the future; that would delete every record")
    else:
        before = now - timedelta(days=settings.audit_retention_days)
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


@_guarded
def _report(args: argparse.Namespace) -> int:
    from cds_service.store.database import open_store
    from cds_service.store.report import build_report, render_html, render_json, render_text

    _, url = _settings_url(args)
    since = _parse_date(args.since, "--since") if args.since else None
    until = _parse_date(args.until, "--until") if args.until else None
    store = open_store(url)
    try:
        report = build_report(store, since=since, until=until, labels=_labels())
    finally:
        store.close()
    render = {"text": render_text, "json": render_json, "html": render_html}[args.format]
    output = render(report)
    if args.output:
        args.output.write_text(output + ("" if output.endswith("\n") else "\n"), encoding="utf-8")
    else:
        print(output)
    return 0


def _labels() -> Any:
    """Tier order and labels from the model card in use; display names of our override reasons."""
    from cds_service.config import Settings
    from cds_service.model import load_model_card
    from cds_service.store.feedback import OVERRIDE_REASON_SYSTEM, OVERRIDE_REASONS
    from cds_service.store.report import ReportLabels

    card = load_model_card(Settings.from_env(os.environ).model_card or None)
    return ReportLabels(
        tier_order=tuple(t.id for t in card.tiers),
        tier_labels={t.id: t.label for t in card.tiers},
        reason_displays={
            (OVERRIDE_REASON_SYSTEM, code): display for code, display in OVERRIDE_REASONS
        },
    )


def _parse_date(value: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _DateError(f"{option} {value!r} is not an ISO 8601 date or date-time") from exc
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
