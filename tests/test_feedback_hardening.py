"""Issue 15, item 4: feedback is the business of the EHR that received the card, and bounded.

The review stored 30,000 feedback rows for made-up card ids from one issuer in 9.6 s, and accepted
issuer B's feedback on issuer A's card: it counted in A's figures and made A's own feedback a
"duplicate". Here, with authentication on as in production:

* feedback naming a card this service never returned is refused (422 OperationOutcome), nothing
  stored;
* feedback from another issuer, or another tenant of the same issuer, on a card is refused the
  same way (the answer does not tell "never issued" from "issued to someone else"), so A's own
  feedback is stored, not a duplicate, and the report counts only A's;
* one card takes a bounded number of entries (422), one issuer a bounded rate (429 with
  Retry-After); a refused POST stores nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from cds_service import create_app
from cds_service.store import Store
from cds_service.store.feedback import (
    MAX_FEEDBACK_PER_CARD,
    CardFeedbackFull,
    CardNotIssued,
    FeedbackEntry,
    FeedbackPolicy,
    FeedbackRateLimited,
    Outcome,
)
from cds_service.store.report import build_report
from cds_service.store.schema import feedback
from tests.cds_invariants import assert_valid_cds_response
from tests.hook_calls import SERVICE_IDS, hook_body, recent_patient
from tests.jwt_factory import bearer, claims, mint, signing_key
from tests.test_store_audit import synthetic_record

BASE = "https://cds.example.org"
ISS_A, ISS_B = "https://ehr-a.example.org", "https://ehr-b.example.org"
SERVICE = SERVICE_IDS["patient-view"]
HOOK_PATH = f"/cds-services/{SERVICE}"
FEEDBACK_PATH = f"{HOOK_PATH}/feedback"
T0 = datetime(2026, 5, 20, 8, 0, tzinfo=UTC)


@dataclass
class Ehr:
    """One trusted EHR (issuer, optional tenant) calling the app through the test client."""

    client: FlaskClient
    iss: str
    tenant: str | None = None

    def _headers(self, path: str) -> dict[str, str]:
        key = signing_key("ES384", self.iss)
        token = mint(key, claims(BASE + path, self.iss, now=time.time(), tenant=self.tenant))
        return {"Authorization": bearer(token)}

    def card(self) -> dict[str, Any]:
        response = self.client.post(
            HOOK_PATH,
            json=hook_body("patient-view", recent_patient()),
            headers=self._headers(HOOK_PATH),
        )
        (card,) = assert_valid_cds_response(response.get_json())
        return card

    def feedback(self, *entries: dict[str, Any]) -> TestResponse:
        return self.client.post(
            FEEDBACK_PATH, json={"feedback": list(entries)}, headers=self._headers(FEEDBACK_PATH)
        )


def overridden(card: str, at: str = "2026-11-25T10:00:00Z") -> dict[str, Any]:
    return {"card": card, "outcome": "overridden", "outcomeTimestamp": at}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """Authentication on: two trusted EHRs, A and B."""
    trust = tmp_path / "trust.json"
    trust.write_text(
        json.dumps(
            {
                "issuers": [
                    {"iss": iss, "jwks": {"keys": [signing_key("ES384", iss).public_jwk()]}}
                    for iss in (ISS_A, ISS_B)
                ]
            }
        )
    )
    application = create_app(
        {"TESTING": True, "TRUSTED_ISSUERS_FILE": str(trust), "PUBLIC_BASE_URL": BASE}
    )
    yield application
    application.extensions["hfs_cds"].close()


def stored_rows(app: Flask) -> int:
    store: Store = app.extensions["hfs_cds"].store
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(feedback)).scalar() or 0)


def assert_outcome(response: TestResponse, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    (issue,) = body["issue"]
    assert issue["code"] == code
    for word in words:
        assert word in issue["diagnostics"]


def test_feedback_for_cards_never_issued_is_refused_and_nothing_is_stored(app: Flask) -> None:
    a = Ehr(app.test_client(), ISS_A)
    made_up = [overridden(str(uuid.uuid4())) for _ in range(200)]
    response = a.feedback(*made_up)
    assert_outcome(response, 422, "not-found", "feedback[0].card", "nothing was stored")
    assert made_up[0]["card"] not in response.get_data(as_text=True)  # never echoed
    # One real card among made-up ones: the POST is refused as a whole.
    card = a.card()
    response = a.feedback(overridden(card["uuid"]), overridden(str(uuid.uuid4())))
    assert_outcome(response, 422, "not-found", "feedback[1].card")
    assert stored_rows(app) == 0


def test_another_issuer_cannot_give_feedback_on_a_card_nor_shadow_its_own(app: Flask) -> None:
    client = app.test_client()
    a, b = Ehr(client, ISS_A), Ehr(client, ISS_B)
    card = a.card()
    entry = overridden(card["uuid"])
    foreign = b.feedback(entry)
    never_issued = b.feedback(overridden(str(uuid.uuid4())))
    assert_outcome(foreign, 422, "not-found")
    # The same answer as for a card never issued: B learns nothing about A's cards.
    assert foreign.get_json() == never_issued.get_json()
    assert stored_rows(app) == 0
    own = a.feedback(entry)
    assert own.status_code == 200
    assert own.get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 0}
    report = build_report(app.extensions["hfs_cds"].store)
    assert (report.cards_with_feedback, report.feedback_entries) == (1, 1)
    assert report.unknown_card_feedback == 0


def test_another_tenant_of_the_same_issuer_is_another_client(app: Flask) -> None:
    client = app.test_client()
    first, second = Ehr(client, ISS_A, tenant="hospital-1"), Ehr(client, ISS_A, tenant="hospital-2")
    card = first.card()
    assert_outcome(second.feedback(overridden(card["uuid"])), 422, "not-found")
    assert first.feedback(overridden(card["uuid"])).status_code == 200


def test_one_card_takes_a_bounded_number_of_entries(app: Flask) -> None:
    a = Ehr(app.test_client(), ISS_A)
    card = a.card()["uuid"]
    times = [f"2026-11-25T10:{m:02d}:00Z" for m in range(MAX_FEEDBACK_PER_CARD + 1)]
    ok = a.feedback(*(overridden(card, at) for at in times[:-1]))
    assert ok.get_json()["stored"] == MAX_FEEDBACK_PER_CARD
    assert a.feedback(overridden(card, times[0])).get_json()["duplicates"] == 1  # resend: fine
    full = a.feedback(overridden(card, times[-1]))
    assert_outcome(full, 422, "business-rule", "feedback[0].card", str(MAX_FEEDBACK_PER_CARD))
    assert stored_rows(app) == MAX_FEEDBACK_PER_CARD


def test_an_issuer_past_its_rate_gets_429_with_retry_after(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint's policy, with a limit small enough to reach in a test."""
    import cds_service.hooks.views as views

    monkeypatch.setattr(
        views, "DEFAULT_POLICY", FeedbackPolicy(max_per_issuer=3, window=timedelta(hours=1))
    )
    client = app.test_client()
    a, b = Ehr(client, ISS_A), Ehr(client, ISS_B)
    cards = [a.card()["uuid"] for _ in range(4)]
    assert a.feedback(*(overridden(c) for c in cards[:3])).status_code == 200
    limited = a.feedback(overridden(cards[3]))
    assert_outcome(limited, 429, "throttled", "send again in")
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600
    assert stored_rows(app) == 3
    assert b.feedback(overridden(b.card()["uuid"])).status_code == 200  # B has its own budget


def test_feedback_arriving_before_its_audit_record_is_asked_again(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the audit writer has not caught up, an unknown card may be in flight: 503, not 422."""
    a = Ehr(app.test_client(), ISS_A)
    runtime = app.extensions["hfs_cds"]
    monkeypatch.setattr(runtime.audit, "flush", lambda timeout=None: False)
    response = a.feedback(overridden(str(uuid.uuid4())))
    assert_outcome(response, 503, "transient", "send it again")
    assert response.headers["Retry-After"]


# -- the store's policy, on SQLite and PostgreSQL ----------------------------------------------------


def test_the_store_refuses_cards_not_issued_to_the_sender(store: Store) -> None:
    record = synthetic_record("card-1", T0)
    store.write_audit([record])
    policy = FeedbackPolicy()
    entry = FeedbackEntry("card-1", Outcome.OVERRIDDEN, T0)
    for issuer, tenant in ((ISS_B, None), (None, "t")):
        with pytest.raises(CardNotIssued):
            store.save_feedback(
                record.service_id, [entry], issuer=issuer, tenant=tenant, policy=policy
            )
    with pytest.raises(CardNotIssued):
        store.save_feedback("another-service", [entry], policy=policy)
    assert store.save_feedback(record.service_id, [entry], policy=policy).stored == 1


def test_the_store_counts_each_issuers_rate_apart(store: Store) -> None:
    policy = FeedbackPolicy(max_per_issuer=2, max_per_card=5, window=timedelta(minutes=10))
    records = [synthetic_record(f"c{i}", T0) for i in range(4)]
    store.write_audit(records)
    service = records[0].service_id

    def post(card: str, minutes: int) -> None:
        entry = FeedbackEntry(card, Outcome.OVERRIDDEN, T0 + timedelta(minutes=minutes))
        store.save_feedback(
            service, [entry], received_at=T0 + timedelta(minutes=minutes), policy=policy
        )

    post("c0", 0)
    post("c1", 1)
    with pytest.raises(FeedbackRateLimited) as limited:
        post("c2", 2)
    assert limited.value.retry_after_seconds == 8 * 60  # when the first leaves the window
    post("c2", 11)  # the first has left the window
    with pytest.raises(CardFeedbackFull):
        store.save_feedback(
            service,
            [FeedbackEntry("c3", Outcome.OVERRIDDEN, T0 + timedelta(seconds=s)) for s in range(6)],
            received_at=T0 + timedelta(hours=1),
            policy=FeedbackPolicy(max_per_card=5),
        )


def test_the_report_counts_only_the_feedback_of_the_ehr_that_received_the_card(
    store: Store,
) -> None:
    """Rows stored before the endpoint refused foreign feedback: counted apart, not as A's."""
    record = dataclasses.replace(synthetic_record("card-a", T0), issuer=ISS_A, tenant="h1")
    store.write_audit([record])
    service = record.service_id
    foreign = FeedbackEntry("card-a", Outcome.ACCEPTED, T0, accepted_suggestions=("s",))
    store.save_feedback(service, [foreign], received_at=T0, issuer=ISS_B)  # no policy: as before
    other_tenant = dataclasses.replace(foreign, outcome_at=T0 + timedelta(seconds=30))
    store.save_feedback(service, [other_tenant], received_at=T0, issuer=ISS_A, tenant="h2")
    report = build_report(store)
    assert (report.cards, report.cards_with_feedback, report.accepted) == (1, 0, 0)
    assert report.unknown_card_feedback == 2
    own = FeedbackEntry("card-a", Outcome.OVERRIDDEN, T0 + timedelta(minutes=1))
    store.save_feedback(service, [own], received_at=T0, issuer=ISS_A, tenant="h1")
    report = build_report(store)
    assert (report.cards_with_feedback, report.feedback_entries, report.overridden) == (1, 1, 1)
