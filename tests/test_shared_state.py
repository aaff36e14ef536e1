"""The shared-state file: where it lives, how it is created, its schema parts and connections.

What the replay cache and the SMART sessions keep in it is tested with them
(``test_shared_replay.py``, ``test_smart_units.py``).
"""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cds_service import create_app
from cds_service import shared_state as shared_state_module
from cds_service.config import ConfigError, load_settings
from cds_service.shared_state import SharedState, SharedStateError


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[SharedState]:
    """A fresh shared-state file in this test's folder, its connections closed afterwards."""
    state = SharedState(tmp_path / "state" / "shared.sqlite3")
    yield state
    state.close()


def test_the_file_is_in_the_instance_folder_unless_named(tmp_path: Path) -> None:
    default = load_settings({"CDS_INSTANCE_PATH": str(tmp_path)})
    assert default.shared_state_file() == tmp_path / "shared-state.sqlite3"
    named = load_settings({"CDS_SHARED_STATE_PATH": str(tmp_path / "x" / "s.db")})
    assert named.shared_state_file() == tmp_path / "x" / "s.db"
    relative = load_settings({"CDS_SHARED_STATE_PATH": "s.db"})
    assert relative.shared_state_file().is_absolute()


def test_the_app_creates_it_on_start(tmp_path: Path) -> None:
    app = create_app({"TESTING": True, "AUTH_REQUIRED": False})
    try:
        path = tmp_path / "instance" / "shared-state.sqlite3"  # conftest's CDS_INSTANCE_PATH
        assert app.extensions["hfs_cds"].shared_state.path == path
        assert path.exists()
    finally:
        app.extensions["hfs_cds"].close()


def test_an_unusable_path_stops_start_up_with_the_variable_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="CDS_SHARED_STATE_PATH"):
        create_app(
            {
                "TESTING": True,
                "AUTH_REQUIRED": False,
                "SHARED_STATE_PATH": str(tmp_path / "a-file" / "state.sqlite3"),
            }
        )


def test_the_file_is_private_and_in_wal_mode(shared: SharedState) -> None:
    assert stat.S_IMODE(shared.path.stat().st_mode) == 0o600
    conn = shared.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 0  # OFF: the state is ephemeral
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_a_looser_existing_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    path.write_bytes(b"")
    path.chmod(0o644)
    SharedState(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_file_that_is_not_a_database_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    path.write_bytes(b"not a database, just some bytes" * 200)
    state = SharedState(path)
    state.ensure_schema("demo", ["CREATE TABLE demo_rows (x INTEGER)"])
    assert state.connection().execute("SELECT count(*) FROM demo_rows").fetchone() == (0,)
    state.close()


def test_a_schema_part_is_kept_while_unchanged_and_recreated_when_changed(
    shared: SharedState,
) -> None:
    shared.ensure_schema("demo", ["CREATE TABLE demo_rows (x INTEGER)"])
    shared.ensure_schema("other", ["CREATE TABLE other_rows (y INTEGER)"])
    shared.connection().execute("INSERT INTO demo_rows VALUES (1)")
    shared.connection().execute("INSERT INTO other_rows VALUES (2)")

    shared.ensure_schema("demo", ["CREATE TABLE demo_rows (x INTEGER)"])  # a second process
    assert shared.connection().execute("SELECT x FROM demo_rows").fetchall() == [(1,)]

    shared.ensure_schema("demo", ["CREATE TABLE demo_rows (x INTEGER, z TEXT)"])  # new version
    assert shared.connection().execute("SELECT x, z FROM demo_rows").fetchall() == []
    assert shared.connection().execute("SELECT y FROM other_rows").fetchall() == [(2,)]


def test_schema_part_names_are_plain(shared: SharedState) -> None:
    with pytest.raises(ValueError, match="plain"):
        shared.ensure_schema("x_y; DROP", ["CREATE TABLE x (a)"])


def test_each_thread_has_its_own_connection(shared: SharedState) -> None:
    mine = shared.connection()
    assert shared.connection() is mine
    theirs: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: theirs.append(shared.connection()))
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine


def test_a_threads_connection_is_closed_when_the_thread_ends(shared: SharedState) -> None:
    """Servers that start a thread per request (``hfs-cds serve``) do not pile up connections."""
    theirs: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: theirs.append(shared.connection()))
    thread.start()
    thread.join()
    with pytest.raises(sqlite3.ProgrammingError):
        theirs[0].execute("SELECT 1")


def test_a_write_transaction_commits_or_rolls_back(shared: SharedState) -> None:
    shared.ensure_schema("demo", ["CREATE TABLE demo_rows (x INTEGER)"])
    with shared.write() as conn:
        conn.execute("INSERT INTO demo_rows VALUES (1)")
    with pytest.raises(RuntimeError), shared.write() as conn:
        conn.execute("INSERT INTO demo_rows VALUES (2)")
        raise RuntimeError("abandon")
    assert shared.connection().execute("SELECT x FROM demo_rows").fetchall() == [(1,)]


def test_close_closes_and_a_later_use_reopens(shared: SharedState) -> None:
    first = shared.connection()
    shared.close()
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("SELECT 1")
    assert shared.connection().execute("SELECT 1").fetchone() == (1,)


def test_a_directory_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite3").mkdir()
    with pytest.raises(SharedStateError, match="cannot use"):
        SharedState(tmp_path / "state.sqlite3")


def test_a_file_busy_in_another_process_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a file that is not a database (or is damaged) is replaced; "busy" means another
    process is using it, and deleting it then would lose that process's state."""
    path = tmp_path / "state.sqlite3"
    SharedState(path).ensure_schema("demo", ["CREATE TABLE demo_rows (x INTEGER)"])

    def busy(db: object, timeout_seconds: float) -> str:
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY
        raise error

    monkeypatch.setattr(shared_state_module, "switch_to_wal", busy)
    with pytest.raises(SharedStateError, match="locked"):
        SharedState(path)
    monkeypatch.undo()
    reopened = SharedState(path)
    tables = reopened.connection().execute("SELECT name FROM sqlite_master").fetchall()
    assert ("demo_rows",) in tables
