"""Calling a service: cards for each situation, request validation and error answers (S1-S9)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests import fhir_builders as fb
from tests.cds_invariants import assert_valid_cds_response
from tests.hook_calls import SERVICE_IDS, HookCaller, hook_body, prefetch_for, recent_patient

PATIENT_VIEW = SERVICE_IDS["patient-view"]


def _card(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = assert_valid_cds_response(response.get_json())
    assert len(cards) == 1
    return cards[0]


def _extension(card: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = card["extension"]["org.example.hfs-cds.assessment"]
    return value


@pytest.mark.parametrize("hook", list(SERVICE_IDS))
def test_42_minute_ablation_hb2_next_day_gets_15_28_61(hooks: HookCaller, hook: str) -> None:
    """The issue's acceptance example, on every hook."""
    # Two days after the ablation: within the window in which every hook answers.
    resources = recent_patient(days_ago=2, minutes=42, hb="II", hb_hours_after=20)
    card = _card(hooks.call(hook, resources))
    assert "61% by 12 months" in card["summary"] and "intermediate" in card["summary"]
    assert card["indicator"] == "info"
    table = dict(re.findall(r"^\| ([A-Za-z]+) \| (.+) \|$", card["detail"], re.M))
    assert table["By"].split(" | ") == ["3 months", "6 months", "12 months"]
    assert table["Risk"].split(" | ") == ["**15%**", "**28%**", "**61%**"]
    ext = _extension(card)
    assert [round(r["risk"], 3) for r in ext["risks"]] == [0.153, 0.283, 0.606]
    assert ext["tier"] == "intermediate"
    assert ext["inputs"]["operationMinutes"]["value"] == 42
    assert ext["inputs"]["houseBrackmannGrade"]["value"] == 2
    assert ext["model"]["id"] == "fei-2022-hfs-rfa-recurrence"


def test_card_detail_is_short_with_inputs_provenance_next_review_and_caveat(
    hooks: HookCaller,
) -> None:
    """The full assumptions and limitations moved to the model-card page; the card keeps one line."""
    detail = _card(hooks.call("patient-view", recent_patient()))["detail"]
    assert "`Procedure/rfa1/_history/1`" in detail
    assert "`Observation/hb1/_history/1`" in detail
    assert "**42 min**" in detail and "HB grade **II**" in detail
    assert "**Next review " in detail and "(1 month); then 3, 6 and 12 months.**" in detail
    assert detail.endswith(
        "Reconstructed from a 99-patient single-centre study; informational only; see "
        "assumptions and limitations."
    )
    assert "**Assumptions**" not in detail and len(detail) <= 720
    assert fb.FREE_TEXT not in detail and "Chen" not in detail


def test_conditional_risk_when_the_ablation_was_months_ago(hooks: HookCaller) -> None:
    card = _card(hooks.call("patient-view", recent_patient(days_ago=120)))
    assert "If still free of spasm at 3.9 months after the ablation: " in card["detail"]
    conditional = _extension(card)["conditionalRisk"]
    assert conditional["risk"] < _extension(card)["risks"][2]["risk"]


def test_fresh_ablation_has_no_conditional_risk(hooks: HookCaller) -> None:
    card = _card(hooks.call("patient-view", recent_patient(days_ago=1)))
    assert "conditionalRisk" not in _extension(card)
    assert "If still free of spasm" not in card["detail"]


def test_high_tier_is_a_warning(hooks: HookCaller) -> None:
    card = _card(hooks.call("patient-view", recent_patient(minutes=25, hb="II")))
    assert card["indicator"] == "warning" and "(high estimate)" in card["summary"]
    assert "Recurrence within a year is likely" in card["detail"]


def test_follow_up_suggestion_is_a_valid_draft_service_request(hooks: HookCaller) -> None:
    card = _card(hooks.call("encounter-discharge", recent_patient(days_ago=2)))
    assert card["selectionBehavior"] == "any"  # ordering reviews and recording are independent
    suggestion, record = card["suggestions"]
    assert suggestion["isRecommended"] is False  # the published card's tiers are not approved
    assert record["label"] == "Record this assessment in the chart"
    assert record["actions"][0]["resource"]["resourceType"] == "RiskAssessment"
    (action,) = suggestion["actions"]
    request = action["resource"]
    assert request["resourceType"] == "ServiceRequest" and request["status"] == "draft"
    assert request["subject"] == {"reference": "Patient/p1"}
    assert request["encounter"] == {"reference": "Encounter/enc1"}
    assert request["requester"] == {"reference": "Practitioner/dr1"}
    assert request["reasonReference"] == [{"reference": "Procedure/rfa1"}]
    assert len(request["occurrenceTiming"]["event"]) == 4  # 1, 3, 6 and 12 months
    assert suggestion["label"] == "Order follow-up reviews at 1, 3, 6, 12 months"
    assert {r["code"] for r in card["overrideReasons"]} >= {"already-planned", "inputs-incorrect"}


def test_reviews_already_past_are_not_suggested(hooks: HookCaller) -> None:
    card = _card(hooks.call("patient-view", recent_patient(days_ago=200)))  # 6.6 months
    suggestion, _record = card["suggestions"]
    assert suggestion["label"].endswith("at 12 months")


def test_no_ablation_gives_exactly_empty_cards(hooks: HookCaller) -> None:
    response = hooks.call("patient-view", [fb.hfs_condition()])
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_ablation_over_12_months_ago_gives_empty_cards(hooks: HookCaller) -> None:
    response = hooks.call("patient-view", recent_patient(days_ago=400))
    assert response.get_json() == {"cards": []}


def test_missing_hb_grade_gives_an_info_card_saying_how_to_record_it(hooks: HookCaller) -> None:
    card = _card(hooks.call("patient-view", recent_patient(hb=None)))
    assert card["indicator"] == "info"
    assert card["summary"].startswith("HFS recurrence risk after RFA not calculated")
    assert "hb-grade-post-rfa" in card["detail"]
    assert "suggestions" not in card
    assert _extension(card)["status"] == "not-scored"
    assert _extension(card)["problems"][0]["reason"] == "no-hb-in-window"


def test_hb_grade_iv_is_a_warning_with_safety_advice(hooks: HookCaller) -> None:
    card = _card(hooks.call("patient-view", recent_patient(hb="IV")))
    assert card["indicator"] == "warning"
    assert "outside the model" in card["summary"]
    assert re.search(r"eye", card["detail"], re.IGNORECASE)


def test_repeat_ablation_is_not_scored(hooks: HookCaller) -> None:
    earlier = fb.ablation_procedure(
        id="rfa0", start="2025-01-01T09:00:00+08:00", end="2025-01-01T09:40:00+08:00"
    )
    card = _card(hooks.call("patient-view", [*recent_patient(), earlier]))
    assert "repeat ablation" in card["summary"]
    assert _extension(card)["problems"][0]["reason"] == "repeat-procedure"


def test_other_patients_resources_are_never_scored(hooks: HookCaller) -> None:
    """The prefetch holds p2's complete record; the request is about p1, who has none."""
    response = hooks.call("patient-view", recent_patient(patient="p2"), patient="p1")
    assert response.get_json() == {"cards": []}


def test_tolerates_extensions_extra_fields_and_practitioner_role(hooks: HookCaller) -> None:
    body = hook_body("order-sign", recent_patient(days_ago=2))  # within the post-ablation window
    body["extension"] = {"com.example.trace": {"id": "x"}}
    body["somethingNew"] = [1, 2]
    body["context"]["userId"] = "PractitionerRole/role7"
    body["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "entry": [],
    }  # no type, like the sandbox
    card = _card(hooks.post(SERVICE_IDS["order-sign"], body))
    assert card["suggestions"][0]["actions"][0]["resource"]["requester"] == {
        "reference": "PractitionerRole/role7"
    }


def test_malicious_ids_are_escaped_in_markdown(hooks: HookCaller) -> None:
    resources = recent_patient()
    resources[1]["id"] = "<img src=x onerror=alert(1)>"
    card = _card(hooks.call("patient-view", resources))
    assert "<img" not in card["detail"]


# -- errors ------------------------------------------------------------------------------------------


def _outcome(response: Any, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    (issue,) = body["issue"]
    assert issue["severity"] == "error"
    diagnostics: str = issue["diagnostics"]
    assert "Traceback" not in diagnostics
    return diagnostics


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("hook"), "'hook' is required"),
        (lambda b: b.pop("hookInstance"), "'hookInstance' is required"),
        (lambda b: b.pop("context"), "'context' is required"),
        (lambda b: b.update(context=[]), "'context' is required and must be an object"),
        (lambda b: b["context"].pop("patientId"), "context.patientId is required"),
        (lambda b: b["context"].pop("userId"), "context.userId is required"),
        (
            lambda b: b["context"].update(patientId=7),
            "context.patientId must be a non-empty string",
        ),
        (lambda b: b.update(hook="order-sign"), "does not match service"),
        (lambda b: b.update(prefetch=[]), "'prefetch' must be an object"),
        (lambda b: b.update(fhirServer="ftp://x"), "'fhirServer' must be an absolute http(s) URL"),
        (
            lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer"}),
            "'fhirAuthorization' was sent without 'fhirServer'",
        ),
    ],
)
def test_invalid_requests_get_400_naming_the_problem(
    hooks: HookCaller, mutate: Any, message: str
) -> None:
    body = hook_body("patient-view", recent_patient())
    mutate(body)
    assert message in _outcome(hooks.post(PATIENT_VIEW, body), 400)


def test_order_sign_requires_draft_orders(hooks: HookCaller) -> None:
    body = hook_body("order-sign", recent_patient())
    del body["context"]["draftOrders"]
    assert "context.draftOrders is required" in _outcome(
        hooks.post(SERVICE_IDS["order-sign"], body), 400
    )


def test_encounter_discharge_requires_encounter(hooks: HookCaller) -> None:
    body = hook_body("encounter-discharge", recent_patient())
    del body["context"]["encounterId"]
    response = hooks.post(SERVICE_IDS["encounter-discharge"], body)
    assert "context.encounterId is required" in _outcome(response, 400)


def test_body_must_be_a_json_object(client: FlaskClient) -> None:
    url = f"/cds-services/{PATIENT_VIEW}"
    assert "not valid JSON" in _outcome(
        client.post(url, data="{", content_type="application/json"), 400
    )
    assert "JSON object" in _outcome(client.post(url, json=[1, 2]), 400)
    assert "application/json" in _outcome(
        client.post(url, data="hook=x", content_type="text/plain"), 415
    )


def test_unknown_service_is_404(hooks: HookCaller) -> None:
    assert "no CDS service" in _outcome(hooks.post("nope", hook_body()), 404)


def test_wrong_method_is_405_with_an_outcome(client: FlaskClient) -> None:
    _outcome(client.get(f"/cds-services/{PATIENT_VIEW}"), 405)


@pytest.mark.parametrize(
    "app_config", [{"TESTING": True, "AUTH_REQUIRED": False, "MAX_REQUEST_BYTES": 10_000}]
)
def test_oversized_body_is_413(client: FlaskClient) -> None:
    body = json.dumps(hook_body("patient-view", recent_patient(), padding="x" * 20_000))
    response = client.post(
        f"/cds-services/{PATIENT_VIEW}", data=body, content_type="application/json"
    )
    _outcome(response, 413)


def test_deeply_nested_json_is_400_not_500(client: FlaskClient) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = client.post(
        f"/cds-services/{PATIENT_VIEW}", data=body, content_type="application/json"
    )
    assert response.status_code == 400


def test_prefetch_keys_of_the_wrong_shape_do_not_crash(hooks: HookCaller) -> None:
    prefetch = prefetch_for(recent_patient())
    prefetch["conditions"] = {"resourceType": "Bundle", "entry": "oops"}
    response = hooks.call("patient-view", prefetch=prefetch)
    assert response.status_code == 412  # unusable and no fhirServer to ask


def test_schedule_from_the_range_is_said_apart_from_the_estimate(hooks: HookCaller) -> None:
    """HB III after 25 min: a 12% (low) estimate, but other codings reach 88%, so the follow-up
    schedule is the high-risk one; the card says both and never "likely"."""
    card = _card(hooks.call("patient-view", recent_patient(minutes=25, hb="III")))
    assert card["summary"] == (
        "Hemifacial spasm recurrence after RFA: 12% by 12 months (low estimate); "
        "7% to 88% under other codings"
    )
    assert card["indicator"] == "info" and "likely" not in card["detail"]
    assert "(high-risk schedule: other plausible codings reach 88%.)" in card["detail"]


@pytest.mark.parametrize(
    "app_config",
    [
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "PUBLIC_BASE_URL": "https://cds.hospital.example",
            "SMART_CLIENT_ID": "hfs-cds-app",
            "SMART_ALLOWED_ISSUERS": "https://ehr.hospital.example/fhir",
        }
    ],
)
def test_card_links_to_the_smart_app_with_the_procedure(hooks: HookCaller) -> None:
    card = _card(hooks.call("patient-view", recent_patient()))
    smart, *others = card["links"]
    assert smart["type"] == "smart" and smart["url"] == "https://cds.hospital.example/smart/launch"
    assert json.loads(smart["appContext"]) == {
        "procedure": "Procedure/rfa1/_history/1",
        "hbGrade": "Observation/hb1/_history/1",
        "operationTime": "Procedure/rfa1/_history/1",
        "risk12m": 0.606,
    }
    assert all(link["type"] == "absolute" and "appContext" not in link for link in others)


def test_every_card_links_to_the_public_model_card_page(
    hooks: HookCaller, client: FlaskClient
) -> None:
    """The full assumptions and limitations are one click away, without the SMART app or sign-in."""
    for resources in (recent_patient(), recent_patient(hb=None)):  # scored and not scored
        card = _card(hooks.call("patient-view", resources))
        (link,) = [x for x in card["links"] if x["label"].startswith("Model card")]
        assert link == {
            "label": "Model card: assumptions and limitations",
            "url": "https://cds.test/model-card",
            "type": "absolute",
        }
    page = client.get("/model-card")
    assert page.status_code == 200 and "Limitations" in page.get_data(as_text=True)


@pytest.mark.parametrize("app_config", [{"TESTING": True, "AUTH_REQUIRED": False}])
def test_no_model_card_link_on_an_internal_http_address(hooks: HookCaller) -> None:
    """Behind a TLS proxy without CDS_PUBLIC_BASE_URL the request's http host is internal: a link
    to it would be broken in the clinician's browser, so the card leaves it out."""
    card = _card(hooks.call("patient-view", recent_patient()))
    assert not [x for x in card["links"] if x["label"].startswith("Model card")]
