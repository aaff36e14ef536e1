"""order-sign, encounter-discharge and note-sign answer only when the card can change what is
done (clinical-presentation.md §4); a 412 is never a silent "all clear" (logged at WARNING).

The clock is pinned; the record is the builders' default patient, whose ablation ended
2026-05-01T01:42Z. The published model card's post-ablation window is 7 days.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.hooks.relevance import is_relevant
from cds_service.hooks.services import NOTE_SIGN_HOOK
from fhir_mappings import load_value_sets, map_patient
from tests import fhir_builders as fb
from tests.cds_invariants import assert_valid_cds_response
from tests.hook_calls import SERVICE_IDS, HookCaller, hook_body, prefetch_for

ABLATION_END = datetime(2026, 5, 1, 1, 42, tzinfo=UTC)
EMPTY: dict[str, list[Any]] = {"cards": []}
FOLLOW_UP_CODES = load_value_sets().follow_up_order


class Clock:
    def __init__(self) -> None:
        self.now = ABLATION_END + timedelta(days=30)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app_config(clock: Clock) -> dict[str, Any]:
    return {"TESTING": True, "AUTH_REQUIRED": False, "CLOCK": clock}


def _record() -> list[dict[str, Any]]:
    return [fb.hfs_condition(), fb.ablation_procedure(), fb.hb_observation()]


def _prescription() -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "rx1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": fb.codeable(
            ("http://www.nlm.nih.gov/research/umls/rxnorm", "197361", "Amlodipine 5 MG Oral Tablet")
        ),
        "subject": {"reference": "Patient/p1"},
    }


def _referral(
    coding: fb.Coding = (fb.SNOMED, "306098008", "Referral to neurology service"),
) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "ref1",
        "status": "draft",
        "intent": "order",
        "code": fb.codeable(coding),
        "subject": {"reference": "Patient/p1"},
    }


def _sign(hooks: HookCaller, *drafts: dict[str, Any]) -> Any:
    body = hook_body("order-sign", _record())
    body["context"]["draftOrders"] = fb.bundle(*drafts) | {"type": "collection"}
    response = hooks.post(SERVICE_IDS["order-sign"], body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def _answer(hooks: HookCaller, hook: str, **context: Any) -> Any:
    body = hook_body(hook, _record())
    body["context"].update(context)
    response = hooks.post(SERVICE_IDS[hook], body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def _one_card(answer: Any) -> dict[str, Any]:
    (card,) = assert_valid_cds_response(answer)
    return card


# -- order-sign --------------------------------------------------------------------------------------


def test_an_unrelated_prescription_a_month_after_the_ablation_gets_no_card(
    hooks: HookCaller,
) -> None:
    """Issue 12: an unrelated prescription got the full card. Thirty days on, it gets nothing."""
    assert _sign(hooks, _prescription()) == EMPTY


def test_orders_signed_within_the_window_get_the_card(hooks: HookCaller, clock: Clock) -> None:
    """Right after the ablation, any order set is the post-ablation plan: the card belongs there."""
    clock.now = ABLATION_END + timedelta(days=6, hours=23)
    _one_card(_sign(hooks, _prescription()))


def test_the_window_closes_after_seven_days(hooks: HookCaller, clock: Clock) -> None:
    clock.now = ABLATION_END + timedelta(days=7, minutes=1)
    assert _sign(hooks, _prescription()) == EMPTY


@pytest.mark.parametrize(
    "coding",
    [
        (fb.SNOMED, "306098008", "Referral to neurology service"),
        (fb.SNOMED, "390906007", "Follow-up encounter"),
        (fb.PROJECT, "follow-up-review", "HFS review after RFA"),
    ],
)
def test_a_follow_up_or_referral_order_later_gets_the_card(
    hooks: HookCaller, coding: fb.Coding
) -> None:
    """Ordering the follow-up is exactly when the risk (and the schedule) helps, however late;
    the card then offers no second follow-up order (one is being signed)."""
    card = _one_card(_sign(hooks, _prescription(), _referral(coding)))
    assert not any(
        a.get("resource", {}).get("resourceType") == "ServiceRequest"
        for s in card.get("suggestions", [])
        for a in s["actions"]
    )


# -- encounter-discharge and note-sign ---------------------------------------------------------------


@pytest.mark.parametrize("hook", ["encounter-discharge", NOTE_SIGN_HOOK])
def test_discharge_and_note_within_the_window_get_the_card(
    hooks: HookCaller, clock: Clock, hook: str
) -> None:
    clock.now = ABLATION_END + timedelta(days=1)
    _one_card(_answer(hooks, hook))


@pytest.mark.parametrize("hook", ["encounter-discharge", NOTE_SIGN_HOOK])
def test_a_later_discharge_or_note_gets_no_card(hooks: HookCaller, hook: str) -> None:
    """A discharge or note a month later is about something else."""
    assert _answer(hooks, hook) == EMPTY


@pytest.mark.parametrize("procedure_id", ["rfa1", "Procedure/rfa1", "Procedure/rfa1/_history/1"])
def test_a_note_about_the_index_ablation_gets_the_card_later(
    hooks: HookCaller, procedure_id: str
) -> None:
    """The procedure note signed late (it happens) is still the note that follows the ablation."""
    _one_card(_answer(hooks, NOTE_SIGN_HOOK, procedureId=procedure_id))


def test_a_note_about_another_procedure_gets_no_card(hooks: HookCaller) -> None:
    assert _answer(hooks, NOTE_SIGN_HOOK, procedureId="appendectomy-9") == EMPTY


def test_patient_view_is_not_subject_to_the_window(hooks: HookCaller) -> None:
    """Opening the chart months later is when the conditional risk matters (patient-view has
    its own rule: suppression after feedback)."""
    _one_card(hooks.call("patient-view", _record()).get_json())


# -- the rule itself (pure) ---------------------------------------------------------------------------


def test_a_date_only_ablation_end_keeps_the_window_open_for_that_whole_day() -> None:
    """A date-only end reads as midnight; the ablation may have ended that evening."""
    inputs = map_patient(
        [fb.ablation_procedure(start=None, end=None, performed="2026-05-01")], "p1"
    )
    assert inputs.ablation is not None and not inputs.ablation.ended_at_has_time
    start = inputs.ablation.ended_at

    def relevant(now: datetime) -> bool:
        return is_relevant("encounter-discharge", {}, inputs.ablation, now, 7, FOLLOW_UP_CODES)

    assert relevant(start + timedelta(days=7, hours=23))
    assert not relevant(start + timedelta(days=8, hours=1))


def test_without_an_ablation_only_a_follow_up_order_is_relevant() -> None:
    now = ABLATION_END
    drafts = fb.bundle(_referral())
    assert is_relevant("order-sign", {"draftOrders": drafts}, None, now, 7, FOLLOW_UP_CODES)
    assert not is_relevant(
        "order-sign", {"draftOrders": fb.bundle()}, None, now, 7, FOLLOW_UP_CODES
    )
    assert not is_relevant("encounter-discharge", {}, None, now, 7, FOLLOW_UP_CODES)
    assert is_relevant("patient-view", {}, None, now, 7, FOLLOW_UP_CODES)


# -- 412 is logged -----------------------------------------------------------------------------------


def test_a_412_is_logged_at_warning_with_its_reason_and_no_phi(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The EHR shows nothing for a 412, which reads like "all clear": operators must see it."""
    body = hook_body("patient-view", _record(), patient="p-secret-7")
    body["prefetch"] = prefetch_for(_record())
    del body["prefetch"]["observations"]
    body["fhirServer"] = "https://ehr.example.org/fhir"  # not allowlisted: the fetch fails
    body["fhirAuthorization"] = {"access_token": "tok-secret-9", "token_type": "Bearer"}
    with caplog.at_level(logging.INFO, logger="cds_service.hooks.views"):
        response = client.post(f"/cds-services/{SERVICE_IDS['patient-view']}", json=body)
    assert response.status_code == 412
    (record,) = [r for r in caplog.records if "412" in r.getMessage()]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "'observations' was absent" in message and "allowlist" in message
    assert "p-secret-7" not in message and "tok-secret-9" not in message


def test_other_refusals_stay_at_info(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    """A malformed request is the caller's bug, not a missed alert: no WARNING noise."""
    with caplog.at_level(logging.INFO, logger="cds_service.hooks.views"):
        client.post(f"/cds-services/{SERVICE_IDS['patient-view']}", json={"hook": "patient-view"})
    assert [r.levelno for r in caplog.records if "refused" in r.getMessage()] == [logging.INFO]
