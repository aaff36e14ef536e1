"""patient-view stays silent after the clinician acted on a card for the same inputs
(clinical-presentation.md §4, issue 12 item 3), through HTTP as an EHR uses it.

The clock is pinned (``create_app({"CLOCK": ...})``) and moved by the tests; the record is the
builders' default patient: a 42-minute ablation ending 2026-05-01T01:42Z, graded HB II that day.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources as package_files
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import create_app
from cds_service.store import StoreUnavailable
from cds_service.store.feedback import FeedbackEntry, Outcome
from tests import fhir_builders as fb
from tests.cds_invariants import assert_valid_cds_response
from tests.hook_calls import SERVICE_IDS, HookCaller

ABLATION_END = datetime(2026, 5, 1, 1, 42, tzinfo=UTC)
PATIENT_VIEW = SERVICE_IDS["patient-view"]
EMPTY: dict[str, list[Any]] = {"cards": []}


@dataclass
class Clock:
    """The app's "now", moved by the test."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, days: float) -> None:
        self.now += timedelta(days=days)


@pytest.fixture
def clock() -> Clock:
    return Clock(ABLATION_END + timedelta(days=3))  # within every hook's post-ablation window


@pytest.fixture
def app_config(clock: Clock) -> dict[str, Any]:
    return {"TESTING": True, "AUTH_REQUIRED": False, "CLOCK": clock}


def _record(patient: str = "p1", grade: str = "II", hb_version: str = "1") -> list[dict[str, Any]]:
    meta = {"versionId": hb_version, "lastUpdated": "2026-05-01T15:00:00+08:00"}
    return [
        fb.hfs_condition(patient=patient),
        fb.ablation_procedure(patient=patient),
        fb.hb_observation(grade=grade, patient=patient, meta=meta),
    ]


def _call(hooks: HookCaller, hook: str = "patient-view", **record: Any) -> Any:
    patient = record.get("patient", "p1")
    response = hooks.call(hook, _record(**record), patient=patient)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def _card(hooks: HookCaller, hook: str = "patient-view", **record: Any) -> dict[str, Any]:
    (card,) = assert_valid_cds_response(_call(hooks, hook, **record))
    return card


def _stamp(clock: Clock) -> str:
    return clock.now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _accept(client: FlaskClient, card: dict[str, Any], clock: Clock, service: str) -> None:
    entry = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": _stamp(clock),
    }
    response = client.post(f"/cds-services/{service}/feedback", json={"feedback": [entry]})
    assert response.status_code == 200 and response.get_json()["unknownCards"] == 0


def _override(
    client: FlaskClient, card: dict[str, Any], clock: Clock, reason: dict[str, Any] | None
) -> None:
    entry: dict[str, Any] = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": _stamp(clock),
    }
    if reason is not None:
        entry["overrideReason"] = reason
    response = client.post(f"/cds-services/{PATIENT_VIEW}/feedback", json={"feedback": [entry]})
    assert response.status_code == 200 and response.get_json()["unknownCards"] == 0


def test_an_accepted_suggestion_silences_patient_view_for_the_same_inputs(
    hooks: HookCaller, client: FlaskClient, clock: Clock
) -> None:
    """The clinician ordered the follow-up from the card: re-opening the chart must not repeat it."""
    _accept(client, _card(hooks), clock, PATIENT_VIEW)
    clock.advance(days=1)
    assert _call(hooks) == EMPTY


@pytest.mark.parametrize(
    "reason",
    [
        None,  # overridden without saying why: still an action on the card
        {
            "reason": {
                "system": "https://hfs-cds.example.org/fhir/CodeSystem/override-reason",
                "code": "already-planned",
            }
        },
        {"reason": {"code": "clinical-judgement"}},  # the sandbox omits system and display
        {"userComment": "seen"},
    ],
)
def test_an_override_with_any_reason_silences_patient_view(
    hooks: HookCaller, client: FlaskClient, clock: Clock, reason: dict[str, Any] | None
) -> None:
    """§4: "overridden with any reason" counts, including none at all."""
    _override(client, _card(hooks), clock, reason)
    assert _call(hooks) == EMPTY


def test_the_card_returns_after_the_suppression_period(
    hooks: HookCaller, client: FlaskClient, clock: Clock
) -> None:
    """Silence is for the model card's period (30 days in the published card), not for ever."""
    _override(client, _card(hooks), clock, {"userComment": "ok"})
    clock.advance(days=29.9)
    assert _call(hooks) == EMPTY
    clock.advance(days=0.2)
    _card(hooks)


def test_a_new_grade_version_gives_a_card_at_once(
    hooks: HookCaller, client: FlaskClient, clock: Clock
) -> None:
    """The clinician acted on what the card said about version 1 of the grade; version 2 may
    say something else, so it is shown at once."""
    _override(client, _card(hooks), clock, {"userComment": "ok"})
    assert _call(hooks) == EMPTY
    card = _card(hooks, hb_version="2")
    assert "hb1/_history/2" in json.dumps(card["extension"])


def test_a_corrected_grade_without_a_new_version_gives_a_card_at_once(
    hooks: HookCaller, client: FlaskClient, clock: Clock
) -> None:
    """Not every EHR bumps meta.versionId: the value read counts as part of the inputs too."""
    _override(client, _card(hooks), clock, {"userComment": "ok"})
    card = _card(hooks, grade="III")
    assert (
        card["extension"]["org.example.hfs-cds.assessment"]["inputs"]["houseBrackmannGrade"][
            "value"
        ]
        == 3
    )


def test_another_patient_is_not_silenced(
    hooks: HookCaller, client: FlaskClient, clock: Clock
) -> None:
    """Same resource ids and versions, different patient: feedback is about one patient only."""
    _override(client, _card(hooks), clock, {"userComment": "ok"})
    assert _call(hooks) == EMPTY
    _card(hooks, patient="p2")


def test_order_sign_is_never_silenced_by_feedback(
    hooks: HookCaller, client: FlaskClient, clock: Clock
) -> None:
    """Suppression is a patient-view rule: signing orders right after the ablation still gets
    the card (order-sign has its own relevance rule)."""
    _override(client, _card(hooks), clock, {"userComment": "ok"})
    assert _call(hooks) == EMPTY
    _card(hooks, "order-sign")


def test_feedback_on_an_order_sign_card_silences_patient_view(
    hooks: HookCaller, client: FlaskClient, clock: Clock
) -> None:
    """The clinician acted on the same assessment, whichever hook showed it."""
    order_sign = SERVICE_IDS["order-sign"]
    _accept(client, _card(hooks, "order-sign"), clock, order_sign)
    assert _call(hooks) == EMPTY


def test_ignored_cards_keep_showing(hooks: HookCaller, clock: Clock) -> None:
    """No feedback, no silence: a card nobody acted on is shown on every chart opening."""
    first = _card(hooks)
    clock.advance(days=1)
    assert _card(hooks)["uuid"] != first["uuid"]


def test_a_not_scored_card_is_silenced_too(
    hooks: HookCaller, client: FlaskClient, clock: Clock
) -> None:
    """A "not calculated" card overridden (e.g. "inputs incorrect") is not repeated for the
    same record; recording the missing grade gives the risk card at once."""
    no_grade = [fb.hfs_condition(), fb.ablation_procedure()]
    (card,) = assert_valid_cds_response(hooks.call("patient-view", no_grade).get_json())
    assert card["extension"]["org.example.hfs-cds.assessment"]["status"] == "not-scored"
    _override(client, card, clock, {"reason": {"code": "inputs-incorrect"}})
    assert hooks.call("patient-view", no_grade).get_json() == EMPTY
    assert _card(hooks)["extension"]["org.example.hfs-cds.assessment"]["status"] == "scored"


def test_a_store_failure_shows_the_card_and_warns_without_phi(
    app: Flask,
    hooks: HookCaller,
    client: FlaskClient,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Never hide a card because the store cannot be read; say so at WARNING, naming no patient.

    The suppression index reads the store off the request (see test_store_recent_actions.py);
    here it never could, so the feedback stored meanwhile is unknown to it."""
    card = _card(hooks, patient="p-secret-7")
    store = app.extensions["hfs_cds"].store

    def down(*args: Any, **kwargs: Any) -> bool:
        raise StoreUnavailable("cannot use the database sqlite:///x: disk I/O error")

    monkeypatch.setattr(store, "feedback_actions", down)
    _override(client, card, clock, {"userComment": "ok"})
    with caplog.at_level(logging.WARNING, logger="cds_service.hooks.views"):
        _card(hooks, patient="p-secret-7")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "suppression check failed, card shown" in warning.getMessage()
    assert "StoreUnavailable" in warning.getMessage()
    assert "p-secret-7" not in warning.getMessage()


def _card_file(tmp_path: Path, **alerting: float) -> Path:
    data = json.loads(
        (
            package_files.files("cds_service.model") / "model_cards" / "fei-2022-hfs-rfa.json"
        ).read_text(encoding="utf-8")
    )
    data["alerting"].update(alerting)
    path = tmp_path / "card.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_zero_days_disables_suppression_and_the_store_read(
    app_config: dict[str, Any], tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site that turns suppression off pays no store read on the hook path."""
    card_file = _card_file(tmp_path, suppress_after_feedback_days=0)
    app = create_app({**app_config, "MODEL_CARD": str(card_file)})
    try:
        hooks, client = HookCaller(app.test_client()), app.test_client()
        _override(client, _card(hooks), clock, {"userComment": "ok"})

        def no_read(*args: Any, **kwargs: Any) -> bool:
            raise AssertionError("the store was read although suppression is off")

        monkeypatch.setattr(app.extensions["hfs_cds"].store, "feedback_actions", no_read)
        _card(hooks)
    finally:
        app.extensions["hfs_cds"].close()


def test_no_card_means_no_store_read(
    app: Flask, hooks: HookCaller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ablation on record: nothing to suppress, so the hot path does not touch the store."""

    def no_read(*args: Any, **kwargs: Any) -> bool:
        raise AssertionError("the store was read for a patient without a card")

    monkeypatch.setattr(app.extensions["hfs_cds"].store, "feedback_actions", no_read)
    assert hooks.call("patient-view", [fb.hfs_condition()]).get_json() == EMPTY


@dataclass
class Monotonic:
    """The suppression index's refresh clock (seconds), moved by the test."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_feedback_silences_this_worker_at_once_and_another_within_the_refresh_interval(
    app_config: dict[str, Any], clock: Clock
) -> None:
    """Feedback posted to this worker refreshes its index at once; feedback another worker stored
    (written straight into the shared store here) is seen at the next refresh, a second later,
    and not before: until then the card is shown once more."""
    monotonic = Monotonic()
    app = create_app({**app_config, "MONOTONIC": monotonic})
    runtime = app.extensions["hfs_cds"]
    try:
        hooks, client = HookCaller(app.test_client()), app.test_client()
        _override(client, _card(hooks), clock, {"userComment": "ok"})
        assert _call(hooks) == EMPTY  # the same monotonic instant: no refresh was due

        elsewhere = _card(hooks, patient="p2")
        assert runtime.audit.flush(10.0)
        entry = FeedbackEntry(elsewhere["uuid"], Outcome.OVERRIDDEN, clock.now)
        runtime.store.save_feedback(PATIENT_VIEW, [entry], received_at=clock.now)
        monotonic.now += 0.5
        _card(hooks, patient="p2")  # not refreshed yet: shown once more
        monotonic.now += 0.6
        assert _call(hooks, patient="p2") == EMPTY
        _card(hooks, patient="p3")  # and nobody else is silenced
    finally:
        runtime.close()
