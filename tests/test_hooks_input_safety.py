"""Input safety through HTTP (clinical-presentation.md §6): an STU3-shaped recurrence blocks the
risk card, and the hook assesses as of its clock, so nothing dated later counts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service import create_app
from tests import fhir_builders as fb
from tests.cds_invariants import assert_valid_cds_response
from tests.hook_calls import SERVICE_IDS, HookCaller, hook_body, iso, recent_patient

PATIENT_VIEW = SERVICE_IDS["patient-view"]
EXTENSION = "org.example.hfs-cds.assessment"


def _only_card(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = assert_valid_cds_response(response.get_json())
    assert len(cards) == 1
    card: dict[str, Any] = cards[0]
    return card


@pytest.fixture
def client_at() -> Iterator[Callable[[datetime], FlaskClient]]:
    """A test client of an app whose clock is pinned (``create_app({"CLOCK": ...})``)."""
    apps = []

    def make(moment: datetime) -> FlaskClient:
        app = create_app({"TESTING": True, "AUTH_REQUIRED": False, "CLOCK": lambda: moment})
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["hfs_cds"].close()


def test_stu3_recurrence_condition_gets_no_risk_card(hooks: HookCaller) -> None:
    """The issue's case: a recurrence recorded as an STU3 Condition (string clinicalStatus) used
    to be skipped and the patient got a risk card. Now the card says it cannot be scored, names
    the Condition and the field, and how to record it in R4."""
    resources = recent_patient(days_ago=20)
    scored = _only_card(hooks.call("patient-view", resources))
    assert scored["extension"][EXTENSION]["status"] == "scored"  # control: same patient, R4 only

    onset = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    stu3 = fb.hfs_condition(id="c1", clinical_status=None, clinicalStatus="recurrence", onset=onset)
    card = _only_card(hooks.call("patient-view", [*resources, stu3]))
    assessment = card["extension"][EXTENSION]
    assert assessment["status"] == "not-scored"
    assert [p["reason"] for p in assessment["problems"]] == ["unreadable-record"]
    message = assessment["problems"][0]["message"]
    assert message.startswith(
        "Condition/c1: clinicalStatus is the string 'recurrence'; FHIR R4 needs a CodeableConcept "
        "(this looks like FHIR STU3)."
    )
    assert "risks" not in assessment
    assert "Condition/c1: clinicalStatus is the string" in card["detail"]
    assert fb.FREE_TEXT not in card["detail"]


def test_hook_assesses_as_of_its_clock(client_at: Callable[[datetime], FlaskClient]) -> None:
    """The builders' ablation ends 2026-05-01 01:42Z and is graded HB II at 07:00Z. A clock before
    the ablation gives no card (nothing to say); between the ablation and the grade the grade is
    not yet on record; a day later the patient is scored."""
    body = hook_body("patient-view", fb.typical_patient())

    before = client_at(datetime(2026, 4, 30, tzinfo=UTC)).post(
        f"/cds-services/{PATIENT_VIEW}", json=body
    )
    assert before.status_code == 200 and before.get_json() == {"cards": []}

    between = client_at(datetime(2026, 5, 1, 5, tzinfo=UTC))
    card = _only_card(between.post(f"/cds-services/{PATIENT_VIEW}", json=body))
    assessment = card["extension"][EXTENSION]
    assert assessment["status"] == "not-scored"
    assert [p["reason"] for p in assessment["problems"]] == ["no-hb-in-window"]
    assert "houseBrackmannGrade" not in assessment.get("inputs", {})

    later = client_at(datetime(2026, 5, 2, tzinfo=UTC))
    card = _only_card(later.post(f"/cds-services/{PATIENT_VIEW}", json=body))
    assert card["extension"][EXTENSION]["status"] == "scored"


def test_hook_ignores_a_recurrence_dated_after_its_clock(
    client_at: Callable[[datetime], FlaskClient],
) -> None:
    """A record dated in the future of the service clock is not yet on record."""
    clock = datetime(2026, 5, 20, tzinfo=UTC)
    future = fb.recurrence_observation(effective=iso(clock + timedelta(days=1)))
    body = hook_body("patient-view", [*fb.typical_patient(), future])
    card = _only_card(client_at(clock).post(f"/cds-services/{PATIENT_VIEW}", json=body))
    assert card["extension"][EXTENSION]["status"] == "scored"
