"""The feedback endpoint and the audit trail, through HTTP as an EHR uses them."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from cds_service import create_app
from cds_service.store import StoreUnavailable
from cds_service.store.schema import audit_record, feedback
from tests.cds_invariants import assert_valid_cds_response
from tests.hook_calls import SERVICE_IDS, HookCaller, hook_body, recent_patient
from tests.jwt_factory import bearer, claims, mint, signing_key

SERVICE = SERVICE_IDS["patient-view"]
FEEDBACK = f"/cds-services/{SERVICE}/feedback"


def _card(hooks: HookCaller, **kw: Any) -> dict[str, Any]:
    (card,) = assert_valid_cds_response(
        hooks.call("patient-view", recent_patient(), **kw).get_json()
    )
    return card


def _accepted(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2026-11-25T10:00:00.123Z",
    }


def _rows(app: Flask, table: Any) -> list[Any]:
    runtime = app.extensions["hfs_cds"]
    assert runtime.audit.flush(10.0)
    with runtime.store.engine.connect() as conn:
        return list(conn.execute(select(table)).mappings())


def test_hook_call_leaves_an_audit_record(app: Flask, hooks: HookCaller) -> None:
    card = _card(hooks)
    (row,) = _rows(app, audit_record)
    assert row["card_uuid"] == card["uuid"] and row["service_id"] == SERVICE
    assert (
        row["hook"] == "patient-view"
        and row["status"] == "scored"
        and row["tier"] == "intermediate"
    )
    assert row["model_id"] == "fei-2022-hfs-rfa-recurrence" and row["patient_id"] == "p1"
    assert json.dumps(row["inputs"]).count("Procedure") >= 1


def test_no_card_means_no_audit_record(app: Flask, hooks: HookCaller) -> None:
    assert hooks.call("patient-view", recent_patient(days_ago=500)).get_json() == {"cards": []}
    assert _rows(app, audit_record) == []


def test_accepted_feedback_is_stored_once(
    app: Flask, client: FlaskClient, hooks: HookCaller
) -> None:
    card = _card(hooks)
    body = {"feedback": [_accepted(card)]}
    first = client.post(FEEDBACK, json=body)
    assert first.status_code == 200 and first.get_json() == {
        "stored": 1,
        "duplicates": 0,
        "unknownCards": 0,
    }
    again = client.post(FEEDBACK, json=body)
    assert again.get_json() == {"stored": 0, "duplicates": 1, "unknownCards": 0}
    (row,) = _rows(app, feedback)
    assert row["outcome"] == "accepted" and row["card_known"]


@pytest.mark.parametrize(
    "entry",
    [
        {"outcome": "overridden"},
        {
            "outcome": "overridden",
            "overrideReason": {"reason": {"code": "already-planned", "system": "x"}},
        },
        {"outcome": "overridden", "overrideReason": {"userComment": "seen in clinic yesterday"}},
    ],
)
def test_overrides_with_or_without_reasons(
    client: FlaskClient, hooks: HookCaller, entry: dict[str, Any]
) -> None:
    card = _card(hooks)
    body = {
        "feedback": [{"card": card["uuid"], "outcomeTimestamp": "2026-11-25T10:00:00Z", **entry}]
    }
    assert client.post(FEEDBACK, json=body).status_code == 200


def test_unknown_cards_are_refused_and_not_stored(app: Flask, client: FlaskClient) -> None:
    """Issue 15 item 4 (test_feedback_hardening.py has the rest): no row for a made-up card."""
    body = {
        "feedback": [
            {
                "card": "no-such-card",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-25T10:00:00Z",
            }
        ]
    }
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 422
    assert response.get_json()["issue"][0]["code"] == "not-found"
    assert _rows(app, feedback) == []


def test_feedback_on_a_card_another_replica_is_still_writing_is_stored(
    app: Flask, client: FlaskClient, hooks: HookCaller
) -> None:
    """Behind a load balancer the card may come from another replica whose writer has not
    committed it yet: the feedback waits for it (up to 1.5 s) instead of a 422 the EHR never
    resends. Here the card's audit record is held back and lands 0.3 s after the feedback."""
    runtime = app.extensions["hfs_cds"]
    card = _card(hooks)
    assert runtime.audit.flush(10)
    with runtime.store.engine.begin() as conn:
        (row,) = conn.execute(select(audit_record).where(audit_record.c.card_uuid == card["uuid"]))
        conn.execute(audit_record.delete())
    record = {k: v for k, v in row._mapping.items() if k != "id"}

    def other_replica_commits() -> None:
        with runtime.store.engine.begin() as conn:
            conn.execute(audit_record.insert(), [record])

    threading.Timer(0.3, other_replica_commits).start()
    started = time.monotonic()
    response = client.post(FEEDBACK, json={"feedback": [_accepted(card)]})
    assert response.status_code == 200 and response.get_json()["stored"] == 1
    assert 0.3 <= time.monotonic() - started < 1.6
    assert len(_rows(app, feedback)) == 1


def test_an_unknown_card_acted_on_minutes_ago_is_send_it_again_not_gone_for_good(
    app: Flask, client: FlaskClient
) -> None:
    """Its record may still wait in another replica's spool (a database fault): 503, nothing
    stored, and the EHR may resend; the same card acted on an hour ago is refused for good."""
    now = datetime.now(UTC)

    def post(minutes_ago: int) -> Any:
        at = (now - timedelta(minutes=minutes_ago)).isoformat()
        entry = {"card": "made-up-or-not-yet", "outcome": "overridden", "outcomeTimestamp": at}
        return client.post(FEEDBACK, json={"feedback": [entry]})

    recent, old = post(2), post(60)
    assert recent.status_code == 503 and recent.headers["Retry-After"] == "5"
    assert recent.get_json()["issue"][0]["code"] == "transient"
    assert old.status_code == 422 and old.get_json()["issue"][0]["code"] == "not-found"
    assert _rows(app, feedback) == []


def test_feedback_goes_to_the_service_that_showed_the_card(
    client: FlaskClient, hooks: HookCaller
) -> None:
    card = _card(hooks)
    other = f"/cds-services/{SERVICE_IDS['order-sign']}/feedback"
    assert client.post(other, json={"feedback": [_accepted(card)]}).status_code == 422
    assert client.post(FEEDBACK, json={"feedback": [_accepted(card)]}).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {
                "feedback": [
                    {"card": "c", "outcome": "maybe", "outcomeTimestamp": "2026-11-25T10:00:00Z"}
                ]
            },
            "outcome",
        ),
        (
            {
                "feedback": [
                    {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-25T10:00:00Z"}
                ]
            },
            "acceptedSuggestions",
        ),
        (
            {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
            "outcomeTimestamp",
        ),
        (
            {"feedback": [{"outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}]},
            "card",
        ),
        ({"feedback": "x"}, "feedback"),
    ],
)
def test_invalid_feedback_is_400(client: FlaskClient, body: dict[str, Any], message: str) -> None:
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 400
    assert message in response.get_json()["issue"][0]["diagnostics"]


def test_feedback_for_an_unknown_service_is_404(client: FlaskClient) -> None:
    assert client.post("/cds-services/nope/feedback", json={"feedback": []}).status_code == 404


def test_store_down_is_503_and_nothing_claimed(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("cannot use the database")

    monkeypatch.setattr(app.extensions["hfs_cds"].store, "save_feedback", down)
    body = {
        "feedback": [
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}
        ]
    }
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 503 and response.get_json()["resourceType"] == "OperationOutcome"


def test_feedback_preflight_needs_no_token(client: FlaskClient) -> None:
    response = client.options(
        FEEDBACK, headers={"Origin": "https://ehr.example", "Access-Control-Request-Method": "POST"}
    )
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == "*"


def test_feedback_jwt_audience_is_the_feedback_url(tmp_path: Path) -> None:
    base, iss = "https://cds.example.org", "https://ehr.example.org"
    key = signing_key("ES384", "feedback")
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"issuers": [{"iss": iss, "jwks": {"keys": [key.public_jwk()]}}]}))
    app = create_app({"TESTING": True, "TRUSTED_ISSUERS_FILE": str(trust), "PUBLIC_BASE_URL": base})
    client = app.test_client()
    hook_token = mint(key, claims(f"{base}/cds-services/{SERVICE}", iss, now=time.time()))
    shown = HookCaller(client).post(
        SERVICE,
        hook_body("patient-view", recent_patient()),
        headers={"Authorization": bearer(hook_token)},
    )
    (card,) = assert_valid_cds_response(shown.get_json())
    entry = {"card": card["uuid"], "outcome": "overridden"}
    body = {"feedback": [{**entry, "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}

    def post(aud_path: str) -> int:
        token = mint(key, claims(base + aud_path, iss, now=time.time()))
        return client.post(
            FEEDBACK, json=body, headers={"Authorization": bearer(token)}
        ).status_code

    assert post(f"/cds-services/{SERVICE}") == 401
    assert post(FEEDBACK) == 200
    (row,) = _rows(app, feedback)
    assert row["issuer"] == iss
    app.extensions["hfs_cds"].close()


def test_readiness_reports_the_store(client: FlaskClient) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["store"] == "sqlite"
