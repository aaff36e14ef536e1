"""Schema versioning: ``db upgrade`` creates and migrates, the app refuses a schema it does not
know, and the migrations produce exactly the tables the code declares."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

import tests.postgres
from cds_service import __version__
from cds_service.sqlite_wal import switch_to_wal
from cds_service.store import (
    HEAD,
    SchemaNotInitialised,
    SchemaOutdated,
    SchemaTooNew,
    StoreUnavailable,
    UnsupportedDatabase,
    open_engine,
    open_store,
    upgrade,
)
from cds_service.store import migrations as migrations_module
from cds_service.store.database import normalise_url
from cds_service.store.migrations import MIGRATIONS, current_version
from cds_service.store.report import build_report, render_text
from cds_service.store.schema import audit_record, metadata, schema_version
from tests.test_store_audit import synthetic_record

# Fixtures from tests/postgres.py (redundant once conftest.py lists it in pytest_plugins).
postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url


def test_upgrade_creates_the_schema_once(database_url: str) -> None:
    engine = open_engine(database_url, create_directory=True)
    try:
        applied = upgrade(engine)
        assert [m.version for m in applied] == [m.version for m in MIGRATIONS]
        assert upgrade(engine) == []
        with engine.connect() as conn:
            assert current_version(conn) == HEAD
            rows = conn.execute(select(schema_version).order_by(schema_version.c.version)).all()
        assert [r.version for r in rows] == [m.version for m in MIGRATIONS]
        assert all(r.applied_at.tzinfo is not None for r in rows)
    finally:
        engine.dispose()
    open_store(database_url).close()


def test_the_migrated_database_has_exactly_the_declared_tables(database_url: str) -> None:
    """Drift check: migrations (frozen DDL) and schema.py (what queries use) must agree."""
    engine = open_engine(database_url, create_directory=True)
    try:
        upgrade(engine)
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) == set(metadata.tables)
        for table in metadata.sorted_tables:
            reflected = {c["name"]: c for c in inspector.get_columns(table.name)}
            assert list(reflected) == [c.name for c in table.columns], table.name
            for column in table.columns:
                assert reflected[column.name]["nullable"] == column.nullable, column
            indexes = {i["name"] for i in inspector.get_indexes(table.name)}
            assert {i.name for i in table.indexes} <= indexes
            uniques = {
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)
            } | {tuple(i["column_names"]) for i in inspector.get_indexes(table.name) if i["unique"]}
            for column in table.columns:
                if column.unique:
                    assert (column.name,) in uniques, column
    finally:
        engine.dispose()


def test_the_app_refuses_a_database_without_schema(database_url: str) -> None:
    engine = open_engine(database_url, create_directory=True)
    with engine.connect():
        pass  # the database exists (SQLite: the file), but has no tables
    engine.dispose()
    with pytest.raises(SchemaNotInitialised, match="hfs-cds db upgrade"):
        open_store(database_url)


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "hfs-cds.sqlite3"
    with pytest.raises(SchemaNotInitialised, match="run 'hfs-cds db upgrade'"):
        open_store(f"sqlite:///{path}")
    assert not path.exists() and not path.parent.exists()


def test_the_app_refuses_a_schema_newer_than_the_code(database_url: str) -> None:
    engine = open_engine(database_url, create_directory=True)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            schema_version.insert().values(
                version=HEAD + 1, name="from the future", applied_at=_now()
            )
        )
    with pytest.raises(SchemaTooNew, match=f"schema version {HEAD + 1}, newer than"):
        open_store(database_url)
    with pytest.raises(SchemaTooNew, match="nothing was changed"):
        upgrade(engine)
    engine.dispose()


def test_the_app_refuses_an_outdated_schema(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_engine(database_url, create_directory=True)
    upgrade(engine)
    engine.dispose()
    monkeypatch.setattr(migrations_module, "HEAD", HEAD + 1)
    with pytest.raises(SchemaOutdated, match=f"this release needs {HEAD + 1}"):
        open_store(database_url)


def test_concurrent_upgrades_apply_each_migration_once(database_url: str) -> None:
    """Replicas that all run ``db upgrade`` at start-up neither fail nor migrate twice."""
    engines = [open_engine(database_url, create_directory=True) for _ in range(4)]
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def run(engine_index: int) -> None:
        try:
            barrier.wait()
            results.append([m.version for m in upgrade(engines[engine_index])])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for engine in engines:
        engine.dispose()
    assert not errors, errors
    # Each step runs in its own transaction, so upgraders may share the work (one applies 1 and 2,
    # another 3): what matters is that every migration is applied exactly once, in order.
    applied = [version for versions in results for version in versions]
    assert sorted(applied) == [m.version for m in MIGRATIONS]
    assert all(versions == sorted(versions) for versions in results)


def test_the_wal_switch_is_retried_while_sqlite_answers_busy() -> None:
    """Several processes opening a new file together: SQLite refuses all but one WAL switch with
    SQLITE_BUSY at once, without its busy handler (test_concurrent_upgrades hit it ~7% of runs)."""

    class Cursor:
        calls = 0

        def execute(self, sql: str) -> Cursor:
            assert sql == "PRAGMA journal_mode=WAL"
            self.calls += 1
            if self.calls < 3:
                busy = sqlite3.OperationalError("database is locked")
                busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
                raise busy
            return self

        def fetchone(self) -> tuple[str]:
            return ("wal",)

    cursor = Cursor()
    assert switch_to_wal(cursor, 5.0) == "wal"  # type: ignore[arg-type]
    assert cursor.calls == 3

    class Broken(Cursor):
        def execute(self, sql: str) -> Cursor:
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = sqlite3.SQLITE_IOERR
            raise error

    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        switch_to_wal(Broken(), 5.0)  # type: ignore[arg-type]


def test_upgrade_to_an_unknown_version_is_refused(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with pytest.raises(ValueError, match="no schema version"):
        upgrade(engine, target=HEAD + 1)
    engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


def test_the_embedded_database_is_created_readable_by_the_service_only(tmp_path: Path) -> None:
    # It holds FHIR patient ids; -wal and -shm take the database file's mode.
    path = tmp_path / "new" / "hfs-cds.sqlite3"
    engine = open_engine(f"sqlite:///{path}", create_directory=True)
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            assert file.stat().st_mode & 0o777 == 0o600, file
    engine.dispose()


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "hfs-cds.sqlite3"
    path.touch(mode=0o640)
    path.chmod(0o640)
    open_engine(f"sqlite:///{path}", create_directory=True).dispose()
    assert path.stat().st_mode & 0o777 == 0o640


# -- URLs and settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("postgresql://u:p@db/hfs", "postgresql+psycopg"),
        ("postgres://u:p@db/hfs", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db/hfs", "postgresql+psycopg"),
        ("sqlite:////var/lib/hfs/x.sqlite3", "sqlite+pysqlite"),
    ],
)
def test_database_urls_are_normalised(raw: str, driver: str) -> None:
    assert normalise_url(raw).drivername == driver


@pytest.mark.parametrize(
    "raw", ["mysql://u@db/x", "sqlite://", "sqlite:///:memory:", "not a url", "http://x"]
)
def test_unsupported_databases_are_refused(raw: str) -> None:
    with pytest.raises(UnsupportedDatabase):
        normalise_url(raw)


def test_messages_hide_the_password() -> None:
    with pytest.raises(SchemaNotInitialised) as caught:
        open_store("sqlite:////nonexistent/dir/x.sqlite3")
    assert "nonexistent" in str(caught.value)
    from cds_service.store.database import describe

    assert "s3cret" not in describe(normalise_url("postgresql://u:s3cret@db/hfs"))


def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        open_store("postgresql://hfs:s3cret@127.0.0.1:1/hfs?connect_timeout=2")
    message = str(caught.value)
    assert message.startswith(
        "cannot use the database postgresql+psycopg://hfs:***@127.0.0.1:1/hfs"
    )
    assert "s3cret" not in message


def _now() -> datetime:
    return datetime.now(UTC)


def test_upgrading_from_schema_3_keeps_the_rows_and_adds_the_software_version(
    database_url: str,
) -> None:
    """Issue 16: records written before schema 4 keep everything and have no software version
    (the report says "unknown"); records written after carry ``cds_service.__version__``."""
    engine = open_engine(database_url, create_directory=True)
    try:
        assert [m.version for m in upgrade(engine, target=3)] == [1, 2, 3]
        old = synthetic_record("old-card", _now()).to_row() | {"inputs_key": "k" * 64}
        del old["software_version"]  # the column does not exist at schema 3
        with engine.begin() as conn:
            conn.execute(audit_record.insert(), [old])  # only the columns given are named
        assert [m.version for m in upgrade(engine)] == list(range(4, HEAD + 1))
    finally:
        engine.dispose()
    store = open_store(database_url)
    try:
        store.write_audit([synthetic_record("new-card", _now())])
        with store.engine.connect() as conn:
            rows = {r.card_uuid: r for r in conn.execute(select(audit_record))}
        assert rows["old-card"].software_version is None
        assert rows["old-card"].inputs_key == "k" * 64 and rows["old-card"].tier == "intermediate"
        assert rows["new-card"].software_version == __version__
        report = build_report(store)
        expected = sorted([(__version__, 1), ("unknown", 1)])
        assert [(s.software_version, s.cards) for s in report.by_software] == expected
        shown = ", ".join(f"{version}: {n}" for version, n in expected)
        assert f"(hfs-cds {shown})" in render_text(report)
    finally:
        store.close()
