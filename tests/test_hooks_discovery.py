"""Discovery (cds-hooks.md §2, checklist D1-D4) and CORS."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from tests.cds_invariants import assert_no_empty_members
from tests.hook_calls import SERVICE_IDS

_TOKEN = re.compile(r"\{\{(.*?)\}\}")


def test_discovery_lists_one_service_per_hook(client: FlaskClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    services = response.get_json()["services"]
    assert {s["hook"]: s["id"] for s in services} == SERVICE_IDS
    for service in services:
        assert service["title"] and service["description"] and service["usageRequirements"]
        assert service["hookVersion"] == "1.0"
    assert_no_empty_members(response.get_json())


def test_prefetch_templates_use_only_valid_tokens_and_narrow_codes(client: FlaskClient) -> None:
    for service in client.get("/cds-services").get_json()["services"]:
        keys = {"procedures", "observations", "conditions", "followUpOrders"}
        assert set(service["prefetch"]) == keys
        for template in service["prefetch"].values():
            assert not template.startswith("/") and "://" not in template  # relative URL
            assert _TOKEN.findall(template) == ["context.patientId"]
            resource_type, query = template.split("?", 1)
            assert resource_type in {"Procedure", "Observation", "Condition", "ServiceRequest"}
            params = dict(p.split("=", 1) for p in query.split("&"))
            # Open follow-up orders only: the search also filters on status.
            extra = {"status"} if resource_type == "ServiceRequest" else set()
            assert set(params) == {"patient", "code"} | extra
            # system|code tokens, percent-encoded: no raw '|' or ':' in the value.
            assert "|" not in params["code"] and ":" not in params["code"]
            assert all("%7C" in token for token in params["code"].split(","))


def test_procedure_prefetch_asks_for_ablation_and_mvd_codes(client: FlaskClient) -> None:
    template = client.get("/cds-services").get_json()["services"][0]["prefetch"]["procedures"]
    assert "005M3ZZ" in template and "64640" in template and "61458" in template


@pytest.mark.parametrize(
    "path",
    ["/cds-services", "/cds-services/hfs-rfa-recurrence-patient-view"],
)
def test_preflight_answers_without_auth_and_with_cors(client: FlaskClient, path: str) -> None:
    response = client.options(
        path,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert 200 <= response.status_code < 300
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


def test_cors_headers_on_get_and_post(client: FlaskClient) -> None:
    assert client.get("/cds-services").headers["Access-Control-Allow-Origin"] == "*"
    post = client.post("/cds-services/hfs-rfa-recurrence-patient-view", json={})
    assert post.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    "app_config",
    [{"TESTING": True, "AUTH_REQUIRED": False, "CORS_ORIGINS": "https://ehr.example.org"}],
)
def test_cors_origins_are_configurable(client: FlaskClient) -> None:
    allowed = client.get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
    assert "Origin" in allowed.headers["Vary"]
    other = client.get("/cds-services", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_health_and_readiness_need_no_token(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["model"]["id"] == "fei-2022-hfs-rfa-recurrence"
