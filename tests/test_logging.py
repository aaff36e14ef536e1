"""Logs: JSON lines with request id and hookInstance; never tokens, JWTs or patient data."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from cds_service import create_app
from cds_service.logging_setup import JsonFormatter
from tests import fhir_builders as fb
from tests.fake_fhir import FakeFhirServer, running_fake_fhir
from tests.hook_calls import SERVICE_IDS, hook_body, prefetch_for, recent_patient
from tests.jwt_factory import bearer, claims, mint, signing_key

BASE = "https://cds.example.org"
ISS = "https://ehr.example.org"
ACCESS_TOKEN = "fhir-access-token-SECRET-7d1f"
PATIENT = "patient-PHI-4711"


@pytest.fixture
def fhir() -> Iterator[FakeFhirServer]:
    """A FHIR endpoint with the patient's record, named by the issuer's trust entry."""
    with running_fake_fhir([fb.patient(id=PATIENT), *recent_patient(patient=PATIENT)]) as server:
        yield server


@pytest.fixture
def app(tmp_path: Path, fhir: FakeFhirServer) -> Iterator[Flask]:
    """The production configuration (authentication on), development mode for the loopback FHIR."""
    trust = tmp_path / "trust.json"
    key = signing_key("ES384", "logging")
    trust.write_text(
        json.dumps(
            {
                "issuers": [
                    {"iss": ISS, "jwks": {"keys": [key.public_jwk()]}, "fhir_servers": [fhir.base]}
                ]
            }
        )
    )
    application = create_app(
        {
            "TESTING": True,
            "TRUSTED_ISSUERS_FILE": str(trust),
            "PUBLIC_BASE_URL": BASE,
            "DEV_MODE": True,
        }
    )
    yield application
    application.extensions["hfs_cds"].close()


def _jwt(path: str) -> str:
    return mint(signing_key("ES384", "logging"), claims(BASE + path, ISS, now=time.time()))


def test_a_full_request_logs_nothing_sensitive(
    app: Flask, fhir: FakeFhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    path = f"/cds-services/{SERVICE_IDS['patient-view']}"
    auth = {
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "x",
        "subject": "s",
    }
    jwts = []
    # 1) prefetch absent: fetched from the FHIR server with the token; 2) full prefetch;
    # 3) FHIR server failing (412); 4) a malformed request (400); 5) a bad JWT (401).
    requests = [
        hook_body(
            "patient-view",
            patient=PATIENT,
            prefetch={},
            fhirServer=fhir.base,
            fhirAuthorization=auth,
        ),
        hook_body("patient-view", recent_patient(patient=PATIENT), patient=PATIENT),
        hook_body(
            "patient-view",
            patient=PATIENT,
            prefetch={},
            fhirServer=fhir.base,
            fhirAuthorization=auth,
        ),
        {"hook": "patient-view", "context": {"patientId": PATIENT}},
    ]
    statuses = []
    for i, body in enumerate(requests):
        fhir.fault = "500" if i == 2 else None
        jwt = _jwt(path)
        jwts.append(jwt)
        statuses.append(
            client.post(path, json=body, headers={"Authorization": bearer(jwt)}).status_code
        )
    bad = _jwt("/elsewhere")
    jwts.append(bad)
    statuses.append(
        client.post(path, json=requests[1], headers={"Authorization": bearer(bad)}).status_code
    )
    assert statuses == [200, 200, 412, 400, 401]

    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    text = "\n".join(lines) + caplog.text
    assert "hook answered" in text and "EHR authentication failed" in text
    for secret in [
        ACCESS_TOKEN,
        PATIENT,
        fb.FREE_TEXT,
        "Chen",
        *jwts,
        *(j.split(".")[2] for j in jwts),
    ]:
        assert secret not in text, f"{secret[:20]}... leaked into the logs"


def test_log_lines_are_json_with_request_id_and_hook_instance(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    # "hook answered" is DEBUG: under gunicorn the access line carries the outcome instead.
    caplog.set_level(logging.DEBUG)
    path = f"/cds-services/{SERVICE_IDS['patient-view']}"
    body = hook_body("patient-view", prefetch=prefetch_for(recent_patient()))
    formatted: list[dict[str, str]] = []
    handler = logging.Handler()
    handler.emit = lambda record: formatted.append(json.loads(JsonFormatter().format(record)))  # type: ignore[method-assign]
    logging.getLogger("cds_service").addHandler(handler)
    try:
        response = app.test_client().post(
            path, json=body, headers={"Authorization": bearer(_jwt(path)), "X-Request-ID": "req-42"}
        )
    finally:
        logging.getLogger("cds_service").removeHandler(handler)
    assert response.headers["X-Request-ID"] == "req-42"
    answered = next(line for line in formatted if line["message"] == "hook answered")
    assert answered["request_id"] == "req-42"
    assert answered["hook_instance"] == body["hookInstance"]
    assert answered["service"] == SERVICE_IDS["patient-view"] and answered["status"] == "scored"


def test_hostile_request_ids_are_replaced(app: Flask) -> None:
    response = app.test_client().get("/healthz", headers={"X-Request-ID": 'x" FAKE=1 {}' * 10})
    replaced = response.headers["X-Request-ID"]
    assert replaced.isalnum() and len(replaced) == 32  # a fresh uuid4 hex, not the caller's text
