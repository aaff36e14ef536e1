"""A FHIR server that dies or hangs mid-test: the hook answers 412 within its time budget.

The measured latencies go to ``test-artifacts/dead-fhir-latency.json`` (the closing-note figures).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service import create_app
from tests import fhir_builders as fb
from tests.fake_fhir import running_fake_fhir
from tests.fhir_server import FhirServerProcess, running_sekmet
from tests.hook_calls import SERVICE_IDS, hook_body, recent_patient

pytestmark = pytest.mark.integration
PATIENT = "dead-fhir-1"
TOKEN = "dead-fhir-access-token-x9"
BUDGET = 2.0  # the default CDS_FHIR_BUDGET_SECONDS
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
PATH = f"/cds-services/{SERVICE_IDS['patient-view']}"


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[FhirServerProcess]:
    """A sekmet-fhir process of this test's own, so it can be killed without harming others."""
    with running_sekmet(tmp_path) as server:
        resources = [fb.patient(id=PATIENT), *recent_patient(patient=PATIENT)]
        server.put_all(resources)
        yield server


def _app(base: str) -> Flask:
    return create_app(
        {"TESTING": True, "AUTH_REQUIRED": False, "DEV_MODE": True, "FHIR_ALLOWLIST": base}
    )


def _call(app: Flask, base: str) -> tuple[int, float, Any]:
    auth = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "x",
        "subject": "s",
    }
    body = hook_body(
        "patient-view", patient=PATIENT, prefetch={}, fhirServer=base, fhirAuthorization=auth
    )
    started = time.perf_counter()
    response = app.test_client().post(PATH, json=body)
    return response.status_code, time.perf_counter() - started, response.get_json()


def _record(name: str, seconds: list[float]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "dead-fhir-latency.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = {
        "budget_seconds": BUDGET,
        "calls": len(seconds),
        "worst_seconds": round(max(seconds), 3),
    }
    path.write_text(json.dumps(data, indent=1))


def test_fhir_server_stopped_mid_test(
    own_server: FhirServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = _app(own_server.base)
    status, _, body = _call(app, own_server.base)
    assert status == 200 and "61% by 12 months" in body["cards"][0]["summary"]
    own_server.stop()
    latencies = []
    for _ in range(5):
        status, elapsed, body = _call(app, own_server.base)
        assert status == 412 and body["resourceType"] == "OperationOutcome"
        latencies.append(elapsed)
    _record("server stopped (connection refused)", latencies)
    assert max(latencies) < BUDGET * 2  # bounded by the budget; generous for a loaded machine
    assert TOKEN not in caplog.text and PATIENT not in caplog.text
    app.extensions["hfs_cds"].close()


def test_fhir_server_that_hangs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with running_fake_fhir(recent_patient(patient=PATIENT)) as server:
        server.delay_seconds = 10.0  # accepts the connection, never answers in time
        app = _app(server.base)
        latencies = []
        for _ in range(3):
            status, elapsed, body = _call(app, server.base)
            assert status == 412 and "querying fhirServer failed" in body["issue"][0]["diagnostics"]
            latencies.append(elapsed)
        _record("server hangs (no answer)", latencies)
        assert max(latencies) < BUDGET * 2
        assert TOKEN not in caplog.text and PATIENT not in caplog.text
        app.extensions["hfs_cds"].close()
