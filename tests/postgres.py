"""A real PostgreSQL server for the store tests, and the ``database_url`` fixture over both backends.

Where the server comes from, in order:

1. ``CDS_TEST_DATABASE_URL`` set: that running server (the role needs CREATEDB). Each test gets a
   fresh database created there and dropped afterwards.
2. Otherwise a throwaway cluster for the session, made with Debian's binaries
   (``/usr/lib/postgresql/<version>/bin/initdb`` and ``pg_ctl``) in a temporary directory,
   listening on a free loopback port. ``initdb`` refuses to run as root, so as root the binaries
   run as the ``postgres`` user (``runuser``), which the Debian package creates. This needs no
   system service, leaves nothing behind, and behaves the same on CI and a developer's machine.

If neither works, the PostgreSQL tests **fail** with a message saying what to install: they are
never skipped silently. A developer without PostgreSQL may opt out explicitly with
``CDS_TEST_SKIP_POSTGRES=1`` (the tests then show as skipped with that reason); the opt-out is
refused when ``CI`` is set.

Fixtures: ``postgres_server`` (session), ``database_url`` (per test, parametrized
``sqlite``/``postgresql``, an empty database) and ``store`` (an upgraded store on it).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cds_service.store import Store, open_engine, open_store, upgrade

SKIP_ENV = "CDS_TEST_SKIP_POSTGRES"
URL_ENV = "CDS_TEST_DATABASE_URL"
# Read at import, before conftest's autouse fixture clears every CDS_* variable for each test.
_SKIP_REQUESTED = os.environ.get(SKIP_ENV, "").strip().lower() in {"1", "true", "yes"}
_GIVEN_URL = os.environ.get(URL_ENV, "").strip()
INSTALL_HINT = (
    "install it with 'apt-get install -y postgresql' (or run scripts/ci-postgres.sh), or point "
    f"{URL_ENV} at a server whose role may CREATE DATABASE; developers without PostgreSQL may "
    f"set {SKIP_ENV}=1"
)


class PostgresUnavailable(RuntimeError):
    pass


class PostgresServer:
    """A server on which tests may create and drop databases."""

    def __init__(self, admin_url: str, description: str) -> None:
        self.admin_url = make_url(admin_url).set(drivername="postgresql+psycopg")
        self.description = description
        self._admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT", pool_size=1)

    def check(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(text("SELECT 1"))

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"hfs_cds_test_{os.getpid()}_{secrets.token_hex(4)}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        self._admin.dispose()


class ThrowawayCluster(PostgresServer):
    """A server :func:`throwaway_cluster` started: one a test may also stop and start again (the
    database outage of ``tests/test_topology_outage.py``). Never the session's shared server."""

    def __init__(self, admin_url: str, description: str, pg_ctl: list[str], log: Path) -> None:
        super().__init__(admin_url, description)
        self._pg_ctl = pg_ctl  # runuser prefix, pg_ctl, -D data; the action goes last
        self._log = log

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: open sessions are ended, new connections refused."""
        self._admin.dispose()  # its pooled connection dies with the server
        _run([*self._pg_ctl, "-m", "fast", "-w", "stop"], "pg_ctl stop", self._log)

    def start(self) -> None:
        """``pg_ctl start`` with the options it first started with; returns once it accepts."""
        _run([*self._pg_ctl, "-l", str(self._log), "-w", "-t", "60", "start"], "pg_ctl start")
        self._admin.dispose()


def _initdb() -> Path:
    """Debian's newest ``initdb`` (it is not on PATH), else one on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1])
    found = shutil.which("initdb")
    if found:
        return Path(found)
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb) found")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def throwaway_cluster(port: int | None = None) -> Iterator[ThrowawayCluster]:
    """initdb + pg_ctl start in a temporary directory; stopped and removed on exit. It listens on
    loopback, on ``port`` when given (``make topology``), else on a free port."""
    bindir = _initdb().parent
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="hfs-cds-pg-"))
    try:
        if as_root:
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root, but 'runuser' is missing")
            try:
                shutil.chown(base, user="postgres", group="postgres")
            except (LookupError, PermissionError) as exc:
                raise PostgresUnavailable(
                    "running as root, but there is no 'postgres' user to run initdb as"
                ) from exc
            prefix = ["runuser", "-u", "postgres", "--"]
        data, log = base / "data", base / "server.log"
        _run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        port = port or _free_port()
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=100"
        )
        _run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
            + ["-o", options, "start"],
            "pg_ctl start",
            log,
        )
        server = ThrowawayCluster(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
            f"throwaway cluster ({bindir.parent.name}) on 127.0.0.1:{port}",
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options],
            log,
        )
        try:
            yield server
        finally:
            server.close()
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresUnavailable(f"{what} could not run: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-600:]
        if log is not None and log.exists():
            detail += "\n" + log.read_text(errors="replace")[-600:]
        raise PostgresUnavailable(f"{what} failed ({done.returncode}): {detail}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session: ``CDS_TEST_DATABASE_URL``, else a throwaway cluster.

    Fails (never skips) when no server can be had, unless ``CDS_TEST_SKIP_POSTGRES=1`` outside CI.
    """
    if _SKIP_REQUESTED:
        if os.environ.get("CI"):
            pytest.fail(f"{SKIP_ENV} is set on CI, where the PostgreSQL tests must run")
        pytest.skip(f"PostgreSQL tests skipped by request ({SKIP_ENV}=1)")
    given = _GIVEN_URL
    if given:
        server = PostgresServer(given, f"{URL_ENV} ({make_url(given).render_as_string()})")
        try:
            server.check()
        except Exception as exc:
            server.close()
            pytest.fail(
                f"cannot connect to the PostgreSQL server in {URL_ENV}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            )
        yield server
        server.close()
        return
    with ExitStack() as stack:
        try:
            server = stack.enter_context(throwaway_cluster())
        except PostgresUnavailable as exc:
            pytest.fail(
                f"PostgreSQL is needed for the store tests and could not start: {exc}. "
                + INSTALL_HINT
            )
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (no schema), once on SQLite (a file) and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A store on ``database_url`` with the schema upgraded to this release (as ``db upgrade`` does)."""
    engine = open_engine(database_url, create_directory=True)
    upgrade(engine)
    engine.dispose()
    opened = open_store(database_url)
    yield opened
    opened.close()
