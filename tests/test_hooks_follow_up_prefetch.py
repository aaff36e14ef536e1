"""The ``followUpOrders`` prefetch key: no follow-up suggestion once a review is ordered
(clinical-presentation.md §4), resolved like the other keys but never a reason for a 412."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import create_app
from cds_service.fhir import FhirError
from tests import fhir_builders as fb
from tests.cds_invariants import assert_valid_cds_response
from tests.fake_fhir import FakeFhirServer, running_fake_fhir
from tests.fhir_server import FhirServerProcess
from tests.hook_calls import SERVICE_IDS, HookCaller, hook_body, prefetch_for, recent_patient

TOKEN = "ehr-issued-access-token-456"
SNOMED_FOLLOW_UP: fb.Coding = (fb.SNOMED, "390906007", "Follow-up encounter")
PROJECT_REVIEW: fb.Coding = (fb.PROJECT, "follow-up-review", "HFS review after RFA")
UNRELATED: fb.Coding = (fb.SNOMED, "73761001", "Colonoscopy")


def _order(
    *,
    id: str = "sr1",
    status: str = "active",
    coding: fb.Coding = SNOMED_FOLLOW_UP,
    patient: str = "p1",
) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": id,
        "meta": {"versionId": "1"},
        "status": status,
        "intent": "order",
        "code": fb.codeable(coding),
        "subject": {"reference": f"Patient/{patient}"},
    }


def _follow_up_suggestions(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Suggestions that would create a follow-up ServiceRequest (others, if any, are ignored)."""
    return [
        s
        for s in card.get("suggestions", [])
        if any(a.get("resource", {}).get("resourceType") == "ServiceRequest" for a in s["actions"])
    ]


def _card(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    (card,) = assert_valid_cds_response(response.get_json())
    return card


def _auth(base: str) -> dict[str, Any]:
    return {
        "fhirServer": base,
        "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "scope": "x"},
    }


def test_discovery_declares_open_follow_up_orders_with_the_value_set_codes(
    client: FlaskClient,
) -> None:
    """EHRs prefetch from the template: it must ask for open orders with our codes only."""
    for service in client.get("/cds-services").get_json()["services"]:
        template = service["prefetch"]["followUpOrders"]
        resource_type, query = template.split("?", 1)
        assert resource_type == "ServiceRequest"
        params = dict(p.split("=", 1) for p in query.split("&"))
        assert params["patient"] == "{{context.patientId}}"
        assert params["status"] == "active,draft"
        codes = unquote(params["code"]).split(",")
        assert "http://snomed.info/sct|390906007" in codes  # what our own suggestion creates
        assert f"{fb.PROJECT}|follow-up-review" in codes
        assert "http://snomed.info/sct|306098008" in codes  # referral to neurology service


@pytest.mark.parametrize(
    "order",
    [
        _order(),
        _order(status="draft", coding=PROJECT_REVIEW),  # e.g. our own accepted suggestion
    ],
)
def test_an_open_follow_up_order_removes_the_suggestion(
    hooks: HookCaller, order: dict[str, Any]
) -> None:
    """Reviews already ordered: offering to order them again is noise (issue 12)."""
    card = _card(hooks.call("patient-view", [*recent_patient(), order]))
    assert _follow_up_suggestions(card) == []
    assert card["extension"]["org.example.hfs-cds.assessment"]["status"] == "scored"


@pytest.mark.parametrize(
    "orders",
    [
        [],
        [_order(status="completed")],  # the review happened; later ones may still be needed
        [_order(status="revoked")],
        [_order(coding=UNRELATED)],
        [_order(patient="p2")],  # another patient's order never counts
    ],
)
def test_without_an_open_follow_up_order_the_suggestion_is_offered(
    hooks: HookCaller, orders: list[dict[str, Any]]
) -> None:
    card = _card(hooks.call("patient-view", [*recent_patient(), *orders]))
    assert len(_follow_up_suggestions(card)) == 1


def test_a_null_follow_up_key_means_none_ordered(hooks: HookCaller) -> None:
    """``null`` is "no data" (CDS Hooks §prefetch): the suggestion is offered, nothing fetched."""
    prefetch = prefetch_for(recent_patient())
    prefetch["followUpOrders"] = None
    assert len(_follow_up_suggestions(_card(hooks.call("patient-view", prefetch=prefetch)))) == 1


def test_an_absent_follow_up_key_without_fhir_server_still_gives_the_card(
    hooks: HookCaller,
) -> None:
    """The key is optional: not knowing about orders must never cost the risk card (no 412)."""
    prefetch = prefetch_for(recent_patient())
    del prefetch["followUpOrders"]
    card = _card(hooks.call("patient-view", prefetch=prefetch))
    assert len(_follow_up_suggestions(card)) == 1


@pytest.fixture
def fhir() -> Iterator[FakeFhirServer]:
    with running_fake_fhir([*recent_patient(), _order()]) as server:
        yield server


@pytest.fixture
def fallback_app(fhir: FakeFhirServer) -> Iterator[Flask]:
    app = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "DEV_MODE": True,
            "PUBLIC_BASE_URL": "https://cds.test",
            "FHIR_ALLOWLIST": fhir.base,
            "FHIR_BUDGET_SECONDS": 1.0,
        }
    )
    yield app
    app.extensions["hfs_cds"].close()


def test_an_absent_follow_up_key_is_fetched_from_the_fhir_server(
    fallback_app: Flask, fhir: FakeFhirServer
) -> None:
    """Resolved like the other keys: the EHR did not prefetch it, so the service asks fhirServer."""
    prefetch = prefetch_for(recent_patient())
    del prefetch["followUpOrders"]
    body = hook_body("patient-view", prefetch=prefetch, **_auth(fhir.base))
    card = _card(HookCaller(fallback_app.test_client()).post(SERVICE_IDS["patient-view"], body))
    assert _follow_up_suggestions(card) == []
    (seen,) = fhir.seen
    assert seen.path == "/fhir/ServiceRequest" and seen.authorization == f"Bearer {TOKEN}"
    assert seen.query["status"] == ["active,draft"] and "390906007" in seen.query["code"][0]


def test_a_failed_follow_up_fetch_still_gives_the_card_and_warns(
    fallback_app: Flask, fhir: FakeFhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the optional key was missing and the server failed: card with the suggestion, and an
    operator-visible warning that it was less informed."""
    fhir.fault = "500"
    prefetch = prefetch_for(recent_patient())
    del prefetch["followUpOrders"]
    body = hook_body("patient-view", prefetch=prefetch, **_auth(fhir.base))
    with caplog.at_level(logging.WARNING, logger="cds_service.gather.prefetch"):
        card = _card(HookCaller(fallback_app.test_client()).post(SERVICE_IDS["patient-view"], body))
    assert len(_follow_up_suggestions(card)) == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'followUpOrders' (absent) could not be fetched" in warning
    assert TOKEN not in warning


def test_a_server_refusing_only_the_follow_up_search_still_gives_the_card(
    fallback_app: Flask, fhir: FakeFhirServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No prefetch at all, and the FHIR server refuses ServiceRequest searches: the required keys
    are fetched again alone, so the patient still gets the risk card."""
    client = fallback_app.extensions["hfs_cds"].fhir_client
    real = client.fetch_all
    batches: list[list[str]] = []

    def refuse_service_requests(
        base: str, queries: dict[str, str], *args: Any, **kwargs: Any
    ) -> Any:
        batches.append(sorted(queries))
        if "followUpOrders" in queries:
            raise FhirError("the FHIR server answered HTTP 400", status=400)
        return real(base, queries, *args, **kwargs)

    monkeypatch.setattr(client, "fetch_all", refuse_service_requests)
    body = hook_body("patient-view", prefetch={}, **_auth(fhir.base))
    card = _card(HookCaller(fallback_app.test_client()).post(SERVICE_IDS["patient-view"], body))
    assert len(_follow_up_suggestions(card)) == 1
    assert batches == [
        ["conditions", "followUpOrders", "observations", "procedures"],
        ["conditions", "observations", "procedures"],
    ]


def test_a_missing_required_key_is_still_412_when_the_server_fails(
    fallback_app: Flask, fhir: FakeFhirServer
) -> None:
    """The optional key's leniency must not leak to the required ones."""
    fhir.fault = "500"
    body = hook_body("patient-view", prefetch={}, **_auth(fhir.base))
    response = HookCaller(fallback_app.test_client()).post(SERVICE_IDS["patient-view"], body)
    assert response.status_code == 412


@pytest.mark.integration
def test_follow_up_orders_fetched_from_a_real_fhir_server(fhir_server: FhirServerProcess) -> None:
    """Against sekmet-fhir: the ServiceRequest search with status and code tokens is understood,
    an open order hides the suggestion and a completed one does not."""
    patient = "it-follow-up-1"
    record = [fb.patient(id=patient), *recent_patient(patient=patient)]
    for resource in record[1:]:
        resource["id"] = f"{resource['id']}-{patient}"
    done = _order(id=f"sr-done-{patient}", status="completed", patient=patient)
    fhir_server.put_all([*record, done])
    app = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "DEV_MODE": True,
            "PUBLIC_BASE_URL": "https://cds.test",
            "FHIR_ALLOWLIST": fhir_server.base,
        }
    )
    try:
        hooks = HookCaller(app.test_client())

        def call() -> dict[str, Any]:
            body = hook_body(
                "patient-view", patient=patient, prefetch={}, **_auth(fhir_server.base)
            )
            return _card(hooks.post(SERVICE_IDS["patient-view"], body))

        assert len(_follow_up_suggestions(call())) == 1
        fhir_server.put_all([_order(id=f"sr-open-{patient}", status="draft", patient=patient)])
        assert _follow_up_suggestions(call()) == []
    finally:
        app.extensions["hfs_cds"].close()
