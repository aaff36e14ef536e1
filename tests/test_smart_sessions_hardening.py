"""Issue 15, items 5 and 6: anonymous launches cannot log clinicians out; no session fixation.

The review's findings, through the app's endpoints (the EHR's OAuth server stubbed in process):

* 10,100 unauthenticated ``GET /smart/launch`` evicted an active SMART session: pending launches
  now live in a pool of their own, so a flood evicts only other pending launches;
* a planted, valid session id survived the OAuth callback: the callback now gives the browser a
  new id and the old one stops working;
* the cookie had no ``__Host-`` prefix: a Secure cookie is now ``__Host-…; Path=/`` without
  ``Domain`` (over plain http on loopback, for development, the prefix is not allowed and the
  cookie keeps its old name).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine
from werkzeug.test import TestResponse

from cds_service import create_app
from cds_service.smart import EXTENSION, init_smart
from cds_service.smart.oauth import SmartConfiguration, TokenResponse, parse_token_response
from cds_service.smart.sealing import Sealer
from cds_service.smart.sessions import LaunchContext, PendingAuthorization, Sessions, SessionStore
from cds_service.smart.shared_sessions import SharedSessionStore
from cds_service.store.database import single_statements
from cds_service.store.state import StateDatabase
from tests.smart.served import FakeClock

EHR = "https://ehr.example/fhir"
BASE = "https://cds.test"
CONFIG = SmartConfiguration(
    authorization_endpoint="https://ehr.example/oauth/authorize",
    token_endpoint="https://ehr.example/oauth/token",
    capabilities=("launch-ehr",),
    code_challenge_methods=("S256",),
)


def token(patient: str = "p1") -> TokenResponse:
    return parse_token_response(
        {
            "access_token": f"access-{patient}",
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "launch openid fhirUser patient/*.rs",
            "patient": patient,
        }
    )


MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeApp]:
    """``make_app(**settings)``: the SMART app mounted, the EHR's discovery and token endpoint
    answered in process (a code exchange always succeeds for patient p1)."""
    for name in [n for n in os.environ if n.startswith("SMART_")]:
        monkeypatch.delenv(name)
    made: list[Flask] = []

    def make(**settings: Any) -> Flask:
        app = create_app(
            {
                "TESTING": True,
                "AUTH_REQUIRED": False,
                "PUBLIC_BASE_URL": BASE,
                "SMART_CLIENT_ID": "hfs-smart-test",
                "SMART_ALLOWED_ISSUERS": EHR,
                **settings,
            }
        )
        init_smart(app, app.extensions["hfs_cds"].settings)
        made.append(app)
        oauth = app.extensions[EXTENSION].oauth
        monkeypatch.setattr(oauth, "discover", lambda fhir_base: CONFIG)
        monkeypatch.setattr(oauth, "exchange_code", lambda *args: token())
        return app

    yield make
    for app in made:
        app.extensions[EXTENSION].close()
        app.extensions["hfs_cds"].close()


def set_cookie(response: TestResponse) -> tuple[str, str, str] | None:
    """``(name, value, whole header)`` of the one cookie the response sets, else None."""
    headers = response.headers.getlist("Set-Cookie")
    if not headers:
        return None
    (header,) = headers
    name, value = header.split(";", 1)[0].split("=", 1)
    return name.strip(), value.strip(), header


class Browser:
    """One browser's cookie for the app (set by hand: the test client's jar is not used)."""

    def __init__(self, client: FlaskClient, cookie: tuple[str, str] | None = None) -> None:
        self.client = client
        self.cookie = cookie

    def get(self, path: str, **query: str) -> TestResponse:
        headers = {"Cookie": f"{self.cookie[0]}={self.cookie[1]}"} if self.cookie else {}
        response = self.client.get(path, query_string=query, headers=headers, base_url=BASE)
        if (cookie := set_cookie(response)) is not None:
            self.cookie = cookie[:2]
        return response

    def start(self) -> str:
        """An EHR launch up to the authorization redirect; the ``state`` sent to the EHR."""
        response = self.get("/smart/launch", iss=EHR, launch="launch-1")
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        return parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]

    def sign_in(self) -> str:
        """A whole EHR launch; the launch reference of the risk page it lands on."""
        state = self.start()
        response = self.get("/smart/callback", state=state, code="code-1")
        assert response.status_code == 303, response.get_data(as_text=True)[:500]
        return urlsplit(response.headers["Location"]).path.split("/")[3]


def sessions_of(app: Flask) -> Sessions:
    sessions: Sessions = app.extensions[EXTENSION].store
    return sessions


def test_anonymous_launches_cannot_evict_a_signed_in_clinician(make_app: MakeApp) -> None:
    """The review's 10,100 launches against 10,000 sessions, scaled down to 60 against 50."""
    app = make_app()
    smart = app.extensions[EXTENSION]
    cds = app.extensions["hfs_cds"]
    app.extensions[EXTENSION] = dataclasses.replace(
        smart,
        store=SharedSessionStore(
            cds.state, Sealer(), cds.clock, timedelta(hours=1), max_sessions=50
        ),
    )
    client = app.test_client(use_cookies=False)
    clinician = Browser(client)
    ref = clinician.sign_in()
    assert clinician.cookie is not None
    for _ in range(60):  # no cookie, no credentials: anyone on the network
        assert Browser(client).get("/smart/launch", iss=EHR, launch="x").status_code == 302
    assert sessions_of(app).launch(clinician.cookie[1], ref) is not None
    assert clinician.get(f"/smart/app/{ref}/what-if.json", minutes="42", hb="II").status_code == 200


def test_a_session_id_planted_before_the_login_is_worthless_after_it(make_app: MakeApp) -> None:
    app = make_app()
    client = app.test_client(use_cookies=False)
    attacker = Browser(client)
    attacker.start()  # a valid session id of the attacker's own
    assert attacker.cookie is not None
    planted = attacker.cookie
    victim = Browser(client, planted)  # e.g. set through a sibling subdomain
    ref = victim.sign_in()
    assert victim.cookie is not None and victim.cookie[1] != planted[1]
    assert not sessions_of(app).exists(planted[1])
    assert sessions_of(app).launch(planted[1], ref) is None
    assert attacker.get(f"/smart/app/{ref}/what-if.json", minutes="42", hb="II").status_code == 404
    assert victim.get(f"/smart/app/{ref}/what-if.json", minutes="42", hb="II").status_code == 200


def test_the_secure_cookie_has_the_host_prefix(make_app: MakeApp) -> None:
    app = make_app()  # SMART_COOKIE_SECURE defaults to true
    client = app.test_client(use_cookies=False)
    response = client.get("/smart/launch", query_string={"iss": EHR, "launch": "l"}, base_url=BASE)
    cookie = set_cookie(response)
    assert cookie is not None
    name, _, header = cookie
    attributes = [part.strip().lower() for part in header.split(";")[1:]]
    assert name == "__Host-hfs_smart_sid"
    assert "path=/" in attributes and "secure" in attributes
    assert not any(a.startswith("domain") for a in attributes)
    # ... and the callback sets the new id under the same name, with the same attributes.
    browser = Browser(client)
    browser.sign_in()
    assert browser.cookie is not None and browser.cookie[0].startswith("__Host-")


def test_over_plain_http_the_cookie_has_no_prefix_and_no_secure(make_app: MakeApp) -> None:
    """Development and tests on loopback (SMART_COOKIE_SECURE=false) keep working."""
    app = make_app(SMART_COOKIE_SECURE=False)
    client = app.test_client(use_cookies=False)
    browser = Browser(client)
    ref = browser.sign_in()
    assert browser.cookie is not None and browser.cookie[0] == "hfs_smart_sid"
    response = client.get("/smart/launch", query_string={"iss": EHR, "launch": "l"}, base_url=BASE)
    cookie = set_cookie(response)
    assert cookie is not None
    header = cookie[2].lower()
    assert "secure" not in header and "__host-" not in header
    assert browser.get(f"/smart/app/{ref}/what-if.json", minutes="42", hb="II").status_code == 200


def test_pages_answer_503_try_again_while_the_session_database_is_away(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every step of the app needs its session store: with the database gone (its file cannot be
    opened, as a stopped server cannot be reached) each answers 503 with Retry-After and a page
    that says to try again, not the 500 of an unexpected error; the log names the exception class
    and holds no traceback. Once the database is back, the same session works again."""
    app = make_app()
    browser = Browser(app.test_client(use_cookies=False))
    ref = browser.sign_in()
    state = app.extensions["hfs_cds"].state
    gone = create_engine("sqlite:////nonexistent-folder/state.sqlite3")
    with monkeypatch.context() as outage:
        outage.setattr(state, "engine", gone)
        outage.setattr(state, "_single", single_statements(gone))
        answers = {
            "launch": browser.get("/smart/launch", iss=EHR, launch="launch-2"),
            "callback": browser.get("/smart/callback", state="s", code="c"),
            "page": browser.get(f"/smart/app/{ref}/"),
            "json": browser.get(f"/smart/app/{ref}/assessment.json"),
            "what-if": browser.get(f"/smart/app/{ref}/what-if.json", minutes="42", hb="II"),
        }
    for step, response in answers.items():
        assert (step, response.status_code) == (step, 503)
        assert response.headers["Retry-After"] == "30"
    assert "cannot keep its session" in answers["page"].get_data(as_text=True)
    assert answers["json"].get_json()["error"] == "store-unavailable"
    logged = [r for r in caplog.records if "session store is unavailable" in r.getMessage()]
    assert len(logged) == len(answers)
    assert all(r.exc_info is None and "OperationalError" in r.getMessage() for r in logged)
    back = browser.get(f"/smart/app/{ref}/what-if.json", minutes="42", hb="II")
    assert back.status_code == 200


# -- the stores --------------------------------------------------------------------------------------

MakeStore = Callable[..., Sessions]


@pytest.fixture(params=["memory", "shared"])
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """``make_store(clock, **kwargs)``: the in-memory store, or the one in the store's database."""
    state: StateDatabase | None = (
        request.getfixturevalue("state") if request.param == "shared" else None
    )

    def make(clock: FakeClock, **kwargs: Any) -> Sessions:
        if state is None:
            return SessionStore(clock, timedelta(hours=1), **kwargs)
        return SharedSessionStore(state, Sealer(), clock, timedelta(hours=1), **kwargs)

    yield make


def _launch(ref: str, clock: FakeClock) -> LaunchContext:
    now = clock()
    return LaunchContext(
        ref=ref,
        fhir_base=EHR,
        token_endpoint=CONFIG.token_endpoint,
        access_token="access-1",
        token_type="Bearer",
        expires_at=now + timedelta(hours=1),
        refresh_token="refresh-1",
        scope=("launch",),
        patient_id="p1",
        encounter_id=None,
        need_patient_banner=True,
        app_context=None,
        fhir_context=(),
        standalone=False,
        created=now,
    )


def _pending(state: str, clock: FakeClock) -> PendingAuthorization:
    return PendingAuthorization(state, "v" * 43, EHR, CONFIG.token_endpoint, BASE, False, clock())


def test_pending_sessions_have_a_pool_of_their_own(make_store: MakeStore) -> None:
    clock = FakeClock()
    sessions = make_store(clock, max_sessions=2, max_pending_sessions=3)
    signed_in = []
    for i in range(2):
        clock.advance(timedelta(minutes=1))
        cookie, _ = sessions.open(None)
        new = sessions.sign_in(cookie, _launch(f"r{i}", clock))
        assert new is not None
        signed_in.append(new)
    flood = []
    for _ in range(10):
        clock.advance(timedelta(seconds=1))
        flood.append(sessions.open(None)[0])
    assert all(sessions.launch(c, f"r{i}") is not None for i, c in enumerate(signed_in))
    assert [sessions.exists(c) for c in flood] == [False] * 7 + [True] * 3
    # Signing in a third clinician evicts the least recently used signed-in session only.
    clock.advance(timedelta(minutes=1))
    sessions.launch(signed_in[0], "r0")  # used again: the second is now the oldest
    clock.advance(timedelta(minutes=1))
    third = sessions.sign_in(flood[-1], _launch("r2", clock))
    assert third is not None
    assert [sessions.exists(c) for c in (*signed_in, third)] == [True, False, True]
    assert [sessions.exists(c) for c in flood[-3:-1]] == [True, True]


def test_signing_in_moves_the_session_to_a_new_id(make_store: MakeStore) -> None:
    clock = FakeClock()
    sessions = make_store(clock)
    old, _ = sessions.open(None)
    sessions.add_pending(old, _pending("other-tab", clock))
    sessions.add_pending(old, _pending("this-tab", clock))
    assert isinstance(sessions.take_pending(old, "this-tab"), PendingAuthorization)
    new = sessions.sign_in(old, _launch("r1", clock))
    assert new is not None and new != old
    assert not sessions.exists(old) and sessions.launch(old, "r1") is None
    assert sessions.launch(new, "r1") is not None
    # What the old id held goes with it: another tab's authorization, the used state.
    assert isinstance(sessions.take_pending(new, "other-tab"), PendingAuthorization)
    assert sessions.take_pending(new, "this-tab") == "used"
    # Signing in again (a second patient) rotates again and keeps the first launch.
    newer = sessions.sign_in(new, _launch("r2", clock))
    assert newer is not None and not sessions.exists(new)
    assert sessions.launch(newer, "r1") is not None and sessions.launch(newer, "r2") is not None
    assert sessions.sign_in(new, _launch("r3", clock)) is None  # a dead id signs nobody in
    assert sessions.sign_in(None, _launch("r3", clock)) is None
