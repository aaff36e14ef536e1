"""Every prefetch shape per key, and the FHIR fallback against a real HTTP endpoint (S6, 412 rules)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import create_app
from cds_service.config import ConfigError
from tests import fhir_builders as fb
from tests.cds_invariants import assert_valid_cds_response
from tests.fake_fhir import FakeFhirServer, running_fake_fhir
from tests.hook_calls import SERVICE_IDS, HookCaller, hook_body, prefetch_for, recent_patient

TOKEN = "ehr-issued-access-token-123"


def _auth(server: FakeFhirServer) -> dict[str, Any]:
    return {
        "fhirServer": server.base,
        "fhirAuthorization": {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Procedure.read user/Observation.read user/Condition.read",
            "subject": "hfs-cds",
        },
    }


@pytest.fixture
def fhir() -> Iterator[FakeFhirServer]:
    """A real HTTP FHIR endpoint on loopback holding p1's scorable record."""
    with running_fake_fhir(recent_patient()) as server:
        yield server


@pytest.fixture
def fallback_client(fhir: FakeFhirServer) -> Iterator[FlaskClient]:
    """A client whose app may query ``fhir`` (dev mode: http on loopback, allowlisted)."""
    app: Flask = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "DEV_MODE": True,
            "PUBLIC_BASE_URL": "https://cds.test",
            "FHIR_ALLOWLIST": fhir.base,
            "FHIR_BUDGET_SECONDS": 1.0,
        }
    )
    yield app.test_client()
    app.extensions["hfs_cds"].close()


def _status_and_diagnostics(response: Any) -> tuple[int, str]:
    body = response.get_json()
    if response.status_code == 200:
        assert_valid_cds_response(body)
        return 200, ""
    assert body["resourceType"] == "OperationOutcome"
    return response.status_code, body["issue"][0]["diagnostics"]


# -- the five shapes, without FHIR access ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("absent", 412),
        (None, 200),
        (fb.bundle(), 200),
        (
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "timeout"}],
            },
            412,
        ),
        (fb.patient(), 412),  # wrong resource type for a search key
        ("<html>error</html>", 412),
    ],
)
@pytest.mark.parametrize("key", ["procedures", "observations", "conditions"])
def test_each_prefetch_shape_without_fhir_access(
    hooks: HookCaller, key: str, value: Any, status: int
) -> None:
    prefetch = prefetch_for(recent_patient())
    if value == "absent":
        del prefetch[key]
    else:
        prefetch[key] = value
    got, diagnostics = _status_and_diagnostics(hooks.call("patient-view", prefetch=prefetch))
    assert got == status
    if status == 412:
        assert f"'{key}'" in diagnostics and "no fhirServer" in diagnostics


def test_null_procedures_means_no_ablation_and_empty_cards(hooks: HookCaller) -> None:
    prefetch = prefetch_for(recent_patient())
    prefetch["procedures"] = None
    assert hooks.call("patient-view", prefetch=prefetch).get_json() == {"cards": []}


def test_no_prefetch_at_all_and_no_fhir_server_is_412(hooks: HookCaller) -> None:
    body = hook_body("patient-view")
    del body["prefetch"]
    status, diagnostics = _status_and_diagnostics(hooks.post(SERVICE_IDS["patient-view"], body))
    assert status == 412
    assert "'procedures' was absent" in diagnostics


# -- fallback to the EHR's FHIR server -----------------------------------------------------------------


def test_absent_keys_are_fetched_with_the_bearer_token(
    fallback_client: FlaskClient, fhir: FakeFhirServer
) -> None:
    body = hook_body("patient-view", prefetch={}, **_auth(fhir))
    response = HookCaller(fallback_client).post(SERVICE_IDS["patient-view"], body)
    cards = assert_valid_cds_response(response.get_json())
    assert "61% by 12 months" in cards[0]["summary"]
    assert sorted(r.path for r in fhir.seen) == [
        "/fhir/Condition",
        "/fhir/Observation",
        "/fhir/Procedure",
        "/fhir/ServiceRequest",  # the optional followUpOrders key, fetched in the same batch
    ]
    assert {r.authorization for r in fhir.seen} == {f"Bearer {TOKEN}"}
    procedure_query = next(r.query for r in fhir.seen if r.path == "/fhir/Procedure")
    assert procedure_query["patient"] == ["p1"]
    assert "http://www.cms.gov/Medicare/Coding/ICD10|005M3ZZ" in procedure_query["code"][0].split(
        ","
    )


def test_only_the_missing_key_is_fetched(
    fallback_client: FlaskClient, fhir: FakeFhirServer
) -> None:
    prefetch = prefetch_for(recent_patient())
    del prefetch["observations"]
    body = hook_body("patient-view", prefetch=prefetch, **_auth(fhir))
    response = HookCaller(fallback_client).post(SERVICE_IDS["patient-view"], body)
    assert response.status_code == 200
    assert [r.path for r in fhir.seen] == ["/fhir/Observation"]


def test_operation_outcome_in_prefetch_is_refetched(
    fallback_client: FlaskClient, fhir: FakeFhirServer
) -> None:
    prefetch = prefetch_for(recent_patient())
    prefetch["procedures"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "x"}],
    }
    body = hook_body("patient-view", prefetch=prefetch, **_auth(fhir))
    cards = HookCaller(fallback_client).post(SERVICE_IDS["patient-view"], body).get_json()["cards"]
    assert len(cards) == 1 and [r.path for r in fhir.seen] == ["/fhir/Procedure"]


def test_null_and_empty_bundle_are_not_requeried(
    fallback_client: FlaskClient, fhir: FakeFhirServer
) -> None:
    prefetch = prefetch_for(recent_patient())
    prefetch["conditions"] = None
    prefetch["observations"] = fb.bundle()
    body = hook_body("patient-view", prefetch=prefetch, **_auth(fhir))
    response = HookCaller(fallback_client).post(SERVICE_IDS["patient-view"], body)
    assert response.status_code == 200 and fhir.seen == []


def test_missing_keys_are_fetched_concurrently(
    fallback_client: FlaskClient, fhir: FakeFhirServer
) -> None:
    fhir.delay_seconds = 0.2
    body = hook_body("patient-view", prefetch={}, **_auth(fhir))
    assert HookCaller(fallback_client).post(SERVICE_IDS["patient-view"], body).status_code == 200
    assert fhir.max_in_flight >= 2


def test_paginated_searches_are_followed(
    fallback_client: FlaskClient, fhir: FakeFhirServer
) -> None:
    fhir.page_size = 1
    fhir.resources += [
        fb.hb_observation(id=f"hb-late{i}", effective="2020-01-01T00:00:00Z") for i in range(3)
    ]
    body = hook_body("patient-view", prefetch={}, **_auth(fhir))
    response = HookCaller(fallback_client).post(SERVICE_IDS["patient-view"], body)
    assert response.status_code == 200
    assert sum(1 for r in fhir.seen if r.path == "/fhir/Observation") == 4


def test_paginated_prefetch_bundle_is_followed_with_the_token(
    fallback_client: FlaskClient, fhir: FakeFhirServer
) -> None:
    resources = recent_patient()
    prefetch = prefetch_for(resources)
    hb = prefetch["observations"]["entry"].pop()  # the HB grade is only on page 2
    fhir.resources = [hb["resource"]]
    prefetch["observations"]["link"] = [
        {"relation": "next", "url": f"{fhir.base}/Observation?patient=p1&_offset=0"}
    ]
    body = hook_body("patient-view", prefetch=prefetch, **_auth(fhir))
    cards = HookCaller(fallback_client).post(SERVICE_IDS["patient-view"], body).get_json()["cards"]
    assert "61%" in cards[0]["summary"]
    assert fhir.seen[0].authorization == f"Bearer {TOKEN}"


@pytest.mark.parametrize("fault", ["500", "html", "garbage", "outcome", "redirect"])
def test_fhir_server_faults_give_412(
    fallback_client: FlaskClient, fhir: FakeFhirServer, fault: str
) -> None:
    fhir.fault = fault
    body = hook_body("patient-view", prefetch={}, **_auth(fhir))
    status, diagnostics = _status_and_diagnostics(
        HookCaller(fallback_client).post(SERVICE_IDS["patient-view"], body)
    )
    assert status == 412 and "querying fhirServer failed" in diagnostics
    assert TOKEN not in diagnostics


def test_slow_fhir_server_gives_412_within_the_budget(
    fallback_client: FlaskClient, fhir: FakeFhirServer
) -> None:
    fhir.delay_seconds = 1.5  # the app's budget is 1 s
    body = hook_body("patient-view", prefetch={}, **_auth(fhir))
    status, diagnostics = _status_and_diagnostics(
        HookCaller(fallback_client).post(SERVICE_IDS["patient-view"], body)
    )
    assert status == 412 and ("in time" in diagnostics or "within" in diagnostics)


def test_server_not_on_the_allowlist_is_never_contacted(
    hooks: HookCaller, fhir: FakeFhirServer
) -> None:
    """The default app has an empty allowlist: 412, and the server sees no request."""
    body = hook_body("patient-view", prefetch={}, **_auth(fhir))
    status, diagnostics = _status_and_diagnostics(hooks.post(SERVICE_IDS["patient-view"], body))
    assert status == 412 and "allowlist" in diagnostics
    assert fhir.seen == []


def test_http_server_outside_dev_mode_is_refused_at_start_up(fhir: FakeFhirServer) -> None:
    with pytest.raises(ConfigError, match="CDS_FHIR_ALLOWLIST: .* must be https"):
        create_app({"TESTING": True, "AUTH_REQUIRED": False, "FHIR_ALLOWLIST": fhir.base})


def test_no_token_means_no_fetch_unless_configured(fhir: FakeFhirServer) -> None:
    body = hook_body("patient-view", prefetch={}, fhirServer=fhir.base)
    strict = create_app(
        {"TESTING": True, "AUTH_REQUIRED": False, "DEV_MODE": True, "FHIR_ALLOWLIST": fhir.base}
    )
    status, diagnostics = _status_and_diagnostics(
        HookCaller(strict.test_client()).post(SERVICE_IDS["patient-view"], body)
    )
    assert status == 412 and "no fhirAuthorization" in diagnostics and fhir.seen == []
    sandbox = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "DEV_MODE": True,
            "PUBLIC_BASE_URL": "https://cds.test",
            "FHIR_ALLOWLIST": fhir.base,
            "FHIR_FETCH_WITHOUT_TOKEN": True,
        }
    )
    assert (
        HookCaller(sandbox.test_client()).post(SERVICE_IDS["patient-view"], body).status_code == 200
    )
    assert {r.authorization for r in fhir.seen} == {None}
