"""Shared fixtures.

The Flask fixture trio (``app``, ``client``, ``cli``) follows Flask's tutorial; ``model`` and
``assessor`` give unit tests the packaged model without any web layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import create_app
from cds_service.assessment import Assessor
from cds_service.model import RecurrenceModel, load_model_card
from cds_service.store import open_engine, upgrade
from cds_service.store.state import StateDatabase, open_state
from fhir_mappings import load_value_sets
from tests.cli_runner import run_cli
from tests.fhir_server import FhirServerProcess, running_sekmet
from tests.hook_calls import HookCaller

#: PostgreSQL fixtures (``postgres_server``, ``database_url`` over sqlite and postgresql, ``store``).
pytest_plugins = ["tests.postgres"]


@pytest.fixture(scope="session")
def model() -> RecurrenceModel:
    """The published model from the packaged model card (read once per test session)."""
    return RecurrenceModel(load_model_card())


@pytest.fixture(scope="session")
def assessor() -> Assessor:
    """The one assessment pipeline with the packaged model card and value sets."""
    return Assessor(load_model_card(), load_value_sets())


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Overrides for ``create_app``; a test may edit it before requesting ``app`` or ``client``.

    The public base is https, as behind any hospital's TLS proxy: cards link to pages on it."""
    return {"TESTING": True, "AUTH_REQUIRED": False, "PUBLIC_BASE_URL": "https://cds.test"}


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """A fresh app per test, built from ``app_config`` (no environment leaks in: CDS_* are cleared)."""
    application = create_app(app_config)
    yield application
    application.extensions["hfs_cds"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client for unit-level HTTP tests."""
    return app.test_client()


@pytest.fixture
def hooks(client: FlaskClient) -> HookCaller:
    """Builds and posts CDS Hooks requests: ``hooks.call("patient-view", resources)``."""
    return HookCaller(client)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``hfs-cds`` in-process: ``code, out, err = cli("score", path)``."""

    def run(*args: str) -> tuple[int, str, str]:
        code = run_cli(*args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServerProcess]:
    """A real FHIR R4 server process (sekmet-fhir) on loopback, empty, shared by the session.

    Tests load what they need with ``fhir_server.transaction(bundle)`` using their own patient ids.
    """
    with running_sekmet(tmp_path_factory.mktemp("sekmet")) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_cds_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests configure the service explicitly; a developer's CDS_* variables must not leak in."""
    import os

    for name in list(os.environ):
        if name.startswith("CDS_"):
            monkeypatch.delenv(name)
    # Apps built in a test keep their embedded audit database in that test's own folder.
    monkeypatch.setenv("CDS_INSTANCE_PATH", str(tmp_path / "instance"))


def migrated_state(url: str) -> StateDatabase:
    """The shared state (JWT replay cache, SMART sessions) on the database at ``url``, migrated."""
    engine = open_engine(url, create_directory=True)
    upgrade(engine)
    engine.dispose()
    return open_state(url)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDatabase]:
    """The shared state on a fresh embedded SQLite store in this test's folder (fast; for tests
    that need a replay cache or a session store, not a backend); closed afterwards."""
    opened = migrated_state(f"sqlite:///{tmp_path / 'state' / 'hfs-cds.sqlite3'}")
    yield opened
    opened.close()


@pytest.fixture
def any_state(database_url: str) -> Iterator[StateDatabase]:
    """The shared state on each backend (``database_url``: a SQLite file, then PostgreSQL)."""
    opened = migrated_state(database_url)
    yield opened
    opened.close()
