"""The hook against a real FHIR server process (sekmet-fhir): with prefetch, and without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from cds_service import create_app
from tests import fhir_builders as fb
from tests.cds_invariants import assert_valid_cds_response
from tests.fhir_server import FhirServerProcess
from tests.hook_calls import SERVICE_IDS, HookCaller, hook_body, recent_patient

pytestmark = pytest.mark.integration
PATIENT = "it-fallback-1"


@pytest.fixture(scope="module")
def seeded(fhir_server: FhirServerProcess) -> FhirServerProcess:
    """The FHIR server holding one scorable patient (ids prefixed so other tests don't collide)."""
    # Two days after the ablation, so order-sign, discharge and note-sign answer too.
    resources = [fb.patient(id=PATIENT), *recent_patient(days_ago=2, patient=PATIENT)]
    for r in resources[1:]:
        r["id"] = f"{r['id']}-{PATIENT}"
    fhir_server.put_all(resources)
    return fhir_server


@pytest.fixture
def fhir_client(seeded: FhirServerProcess) -> Iterator[FlaskClient]:
    """The app allowed to query the real FHIR server (development mode: http on loopback)."""
    app = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "DEV_MODE": True,
            "FHIR_ALLOWLIST": seeded.base,
            "PUBLIC_BASE_URL": "https://cds.test",
        }
    )
    yield app.test_client()
    app.extensions["hfs_cds"].close()


@pytest.mark.parametrize("hook", list(SERVICE_IDS))
def test_no_prefetch_fetches_from_the_fhir_server(
    fhir_client: FlaskClient, seeded: FhirServerProcess, hook: str
) -> None:
    body = hook_body(
        hook,
        patient=PATIENT,
        prefetch={},
        fhirServer=seeded.base,
        fhirAuthorization={
            "access_token": "t",
            "token_type": "Bearer",
            "expires_in": 60,
            "scope": "x",
        },
    )
    response = HookCaller(fhir_client).post(SERVICE_IDS[hook], body)
    (card,) = assert_valid_cds_response(response.get_json())
    assert "61% by 12 months" in card["summary"]
    ext = card["extension"]["org.example.hfs-cds.assessment"]
    assert ext["procedure"]["id"] == f"rfa1-{PATIENT}"


def test_prefetch_filled_from_the_server_matches_the_fetch(
    fhir_client: FlaskClient, seeded: FhirServerProcess
) -> None:
    """An EHR that runs the discovery templates itself gets the same card as the fallback."""
    import requests

    templates = fhir_client.get("/cds-services").get_json()["services"][0]["prefetch"]
    prefetch = {
        key: requests.get(
            f"{seeded.base}/{template.replace('{{context.patientId}}', PATIENT)}", timeout=10
        ).json()
        for key, template in templates.items()
    }
    with_prefetch = HookCaller(fhir_client).post(
        SERVICE_IDS["patient-view"], hook_body(patient=PATIENT, prefetch=prefetch)
    )
    (card,) = assert_valid_cds_response(with_prefetch.get_json())
    assert "61% by 12 months" in card["summary"]
    assert prefetch["procedures"]["total"] == 1 and prefetch["observations"]["total"] == 1
