"""The SMART app's parts without servers: settings, PKCE, scopes, token answers, appContext, the
session store, the chart, log redaction, and pages that need no EHR."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from cds_service import create_app
from cds_service.assessment import Assessor
from cds_service.config import DEFAULT_SCOPES, ConfigError, SmartSettings
from cds_service.gather.app_context import (
    CardInputs,
    CardProcedure,
    CardReference,
    app_context_for,
    card_inputs,
    card_procedure,
)
from cds_service.model import RecurrenceModel
from cds_service.presentation import present
from cds_service.smart import RedactSmartQueries, init_smart, launch_url
from cds_service.smart.app_state import default_frame_ancestors
from cds_service.smart.chart import build_chart, curve
from cds_service.smart.errors import Failure, SmartError
from cds_service.smart.oauth import (
    OAuthClient,
    missing_access,
    new_pkce,
    new_state,
    parse_token_response,
    s256,
)
from cds_service.smart.page import WhatIfInput, card_notice, parse_what_if
from cds_service.smart.sealing import Sealer
from cds_service.smart.sessions import (
    MAX_LAUNCHES_PER_SESSION,
    MAX_PENDING_PER_SESSION,
    MAX_USED_STATES,
    LaunchContext,
    PendingAuthorization,
    RefreshedTokens,
    Sessions,
    SessionStore,
)
from cds_service.smart.shared_sessions import SharedSessionStore
from cds_service.store.state import StateDatabase
from tests.hook_calls import recent_patient
from tests.smart.pages import Page
from tests.smart.served import FakeClock

# -- settings (parsed in test_settings.py) -----------------------------------------------------------


def test_frame_ancestors_default_to_the_registered_ehrs() -> None:
    settings = SmartSettings(
        allowed_issuers=("https://ehr.example/fhir/r4", "https://ehr.example/other"),
        standalone_fhir_base="https://fhir.example:8443/base",
    )
    assert default_frame_ancestors(settings) == (
        "'self'",
        "https://ehr.example",
        "https://fhir.example:8443",
    )


# -- PKCE, state, scopes, token answers --------------------------------------------------------------


def test_s256_matches_rfc_7636_appendix_b() -> None:
    assert (
        s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_pkce_and_state_are_fresh_and_long_enough() -> None:
    pairs = {new_pkce() for _ in range(20)}
    assert len(pairs) == 20
    for verifier, challenge in pairs:
        assert 43 <= len(verifier) <= 128 and s256(verifier) == challenge
    assert len({new_state() for _ in range(20)}) == 20
    assert len(new_state()) >= 43  # 32 random bytes; SMART asks for at least 122 bits


@pytest.mark.parametrize(
    ("granted", "missing"),
    [
        (DEFAULT_SCOPES, []),
        (("patient/*.read",), []),
        (("user/*.rs",), []),
        (("patient/*.cruds",), []),
        (
            ("patient/Patient.read", "patient/Observation.read", "patient/Procedure.*"),
            ["Condition"],
        ),
        (
            (
                "patient/Patient.r",
                "patient/Observation.r",
                "patient/Procedure.rs",
                "patient/Condition.rs",
            ),
            ["Observation"],
        ),
        (("launch", "openid"), ["Patient", "Procedure", "Observation", "Condition"]),
    ],
)
def test_the_granted_scope_must_cover_what_is_read(
    granted: tuple[str, ...], missing: list[str]
) -> None:
    assert [m.split(" ")[0] for m in missing_access(granted)] == missing


def _token(**fields: Any) -> dict[str, Any]:
    return {"access_token": "at", "token_type": "bearer", "scope": "launch", **fields}


def test_a_token_answer_carries_the_launch_context() -> None:
    token = parse_token_response(
        _token(
            patient="p-1",
            expires_in="300",
            need_patient_banner=False,
            appContext={"procedure": "Procedure/x"},
            fhirContext=[{"reference": "Procedure/y"}, {"canonical": "x"}],
            refresh_token="rt",
        )
    )
    assert (token.patient, token.expires_in, token.need_patient_banner) == ("p-1", 300, False)
    assert token.app_context == '{"procedure": "Procedure/x"}'
    assert token.fhir_context == ("Procedure/y",)
    assert token.refresh_token == "rt" and token.scope == ("launch",)
    assert parse_token_response(_token()).need_patient_banner is True  # absent: show the banner


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "Bearer"},
        _token(access_token=""),
        _token(token_type="mac"),
        _token(patient="../../Patient/other"),
        _token(patient=42),
    ],
)
def test_an_unusable_token_answer_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(SmartError) as caught:
        parse_token_response(body)
    assert caught.value.failure is Failure.TOKEN_INVALID


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"token_endpoint": "https://a/token"}, "no authorization_endpoint"),
        (
            {"authorization_endpoint": "http://ehr.example/auth", "token_endpoint": "/token"},
            "authorization_endpoint is not an https URL",
        ),
        (
            {
                "authorization_endpoint": "https://a/auth",
                "token_endpoint": "https://a/token",
                "code_challenge_methods_supported": ["plain"],
            },
            "does not list S256",
        ),
    ],
)
def test_an_unusable_smart_configuration_is_refused(document: dict[str, Any], problem: str) -> None:
    client = OAuthClient("c", "", 1.0, 60.0, allow_loopback_http=False)
    try:
        with pytest.raises(SmartError, match="discovery-invalid") as caught:
            client._parse_configuration("https://ehr.example/fhir", document)
        assert problem in (caught.value.detail or "")
    finally:
        client.close()


def test_relative_endpoints_resolve_against_the_fhir_base() -> None:
    client = OAuthClient("c", "", 1.0, 60.0, allow_loopback_http=False)
    try:
        config = client._parse_configuration(
            "https://ehr.example/fhir",
            {"authorization_endpoint": "auth/authorize", "token_endpoint": "/oauth/token"},
        )
    finally:
        client.close()
    assert config.authorization_endpoint == "https://ehr.example/fhir/auth/authorize"
    assert config.token_endpoint == "https://ehr.example/oauth/token"


@pytest.mark.parametrize(
    ("app_context", "fhir_context", "expected"),
    [
        ('{"procedure": "Procedure/rfa1/_history/2"}', (), CardProcedure("rfa1", "2")),
        ("Procedure/rfa1", (), CardProcedure("rfa1", None)),
        ("https://ehr.example/fhir/Procedure/rfa1", (), CardProcedure("rfa1", None)),
        (None, ("Encounter/e1", "Procedure/p2"), CardProcedure("p2", None)),
        ('{"procedure": "Observation/x"}', (), None),
        ("not json, not a reference", (), None),
        (None, (), None),
    ],
)
def test_the_cards_procedure_is_read_from_app_context(
    app_context: str | None, fhir_context: tuple[str, ...], expected: CardProcedure | None
) -> None:
    assert card_procedure(app_context, fhir_context) == expected


def test_the_card_link_app_context_round_trips() -> None:
    context = app_context_for("Procedure/rfa1/_history/2")
    assert context == '{"procedure":"Procedure/rfa1/_history/2"}'
    assert card_procedure(context, ()) == CardProcedure("rfa1", "2")


# -- the session store -------------------------------------------------------------------------------
# Both stores behave the same: the in-memory one and the one every worker process shares
# (its cross-process behaviour is in test_smart_shared_store.py).

MakeStore = Callable[..., Sessions]


@pytest.fixture(params=["memory", "shared"])
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """``make_store(clock, idle, **kwargs)``: the in-memory session store, or the one in the
    store's database (embedded SQLite here; both backends in test_smart_shared_store.py)."""
    state: StateDatabase | None = (
        request.getfixturevalue("state") if request.param == "shared" else None
    )

    def make(clock: FakeClock, idle: timedelta, **kwargs: Any) -> Sessions:
        if state is None:
            return SessionStore(clock, idle, **kwargs)
        return SharedSessionStore(state, Sealer(), clock, idle, **kwargs)

    yield make


def _pending(state: str, created: datetime) -> PendingAuthorization:
    return PendingAuthorization(
        state, "v" * 43, "https://e/fhir", "https://e/t", "https://a/cb", False, created
    )


def _launch(ref: str, created: datetime, **fields: Any) -> LaunchContext:
    values: dict[str, Any] = {
        "fhir_base": "https://e/fhir",
        "token_endpoint": "https://e/token",
        "access_token": "access-1",
        "token_type": "Bearer",
        "expires_at": created + timedelta(minutes=5),
        "refresh_token": "refresh-1",
        "scope": ("launch", "patient/*.rs"),
        "patient_id": "p-1",
        "encounter_id": None,
        "need_patient_banner": True,
        "app_context": '{"procedure": "Procedure/x"}',
        "fhir_context": ("Procedure/y",),
        "standalone": False,
        "created": created,
        **fields,
    }
    return LaunchContext(ref=ref, **values)


def test_a_state_works_once_and_only_in_its_own_session(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1))
    mine, created = store.open(None)
    other, _ = store.open(None)
    assert created and mine != other
    store.add_pending(mine, _pending("s1", clock()))
    assert store.take_pending(other, "s1") == "unknown"
    assert isinstance(store.take_pending(mine, "s1"), PendingAuthorization)
    assert store.take_pending(mine, "s1") == "used"
    assert store.take_pending(None, "s1") == "no-session"


def test_a_stale_authorization_expires(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1))
    cookie, _ = store.open(None)
    store.add_pending(cookie, _pending("s1", clock()))
    clock.advance(timedelta(minutes=11))
    assert store.take_pending(cookie, "s1") == "expired"


def test_idle_sessions_end_and_unknown_cookies_are_never_adopted(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(minutes=30))
    cookie, _ = store.open(None)
    assert store.open(cookie) == (cookie, False)
    clock.advance(timedelta(minutes=31))
    assert not store.exists(cookie)
    fresh, created = store.open(cookie)
    assert created and fresh != cookie
    planted, created = store.open("attacker-chosen-value")
    assert created and planted != "attacker-chosen-value"


def test_a_used_session_stays_alive(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(minutes=30))
    cookie, _ = store.open(None)
    for _ in range(3):
        clock.advance(timedelta(minutes=20))
        assert store.launch(cookie, "any") is None  # any use counts
    assert store.exists(cookie)


def test_a_pending_authorization_keeps_everything_the_callback_needs(
    make_store: MakeStore,
) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1))
    cookie, _ = store.open(None)
    pending = PendingAuthorization(
        "s1", "verifier-" + "x" * 40, "https://e/fhir", "https://e/t", "https://a/cb", True, clock()
    )
    store.add_pending(cookie, pending)
    assert store.take_pending(cookie, "s1") == pending


def test_a_launch_belongs_to_its_session(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1))
    mine, _ = store.open(None)
    other, _ = store.open(None)
    launch = _launch("r1", clock())
    store.add_launch(mine, launch)
    assert store.launch(other, "r1") is None
    assert store.launch(None, "r1") is None
    assert store.launch(mine, "r1") == launch
    store.drop_launch(mine, "r1")
    assert store.launch(mine, "r1") is None


def test_per_session_maxima_drop_the_oldest(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1))
    cookie, _ = store.open(None)
    for i in range(MAX_PENDING_PER_SESSION + 1):
        store.add_pending(cookie, _pending(f"p{i}", clock()))
    assert store.take_pending(cookie, "p0") == "unknown"  # dropped, never used
    assert isinstance(store.take_pending(cookie, "p1"), PendingAuthorization)
    for i in range(MAX_LAUNCHES_PER_SESSION + 1):
        store.add_launch(cookie, _launch(f"r{i}", clock()))
    assert store.launch(cookie, "r0") is None
    assert store.launch(cookie, "r1") is not None


def test_used_states_are_remembered_up_to_a_bound(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1))
    cookie, _ = store.open(None)
    for i in range(MAX_USED_STATES + 1):
        store.add_pending(cookie, _pending(f"u{i}", clock()))
        store.take_pending(cookie, f"u{i}")
    assert store.take_pending(cookie, "u1") == "used"
    assert store.take_pending(cookie, "u0") == "unknown"  # forgotten: the oldest used


def test_the_least_recently_used_session_goes_when_there_are_too_many(
    make_store: MakeStore,
) -> None:
    """In each pool: pending sessions here (test_smart_sessions_hardening.py has both pools)."""
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1), max_pending_sessions=3)
    first, _ = store.open(None)
    clock.advance(timedelta(minutes=1))
    second, _ = store.open(None)
    clock.advance(timedelta(minutes=1))
    third, _ = store.open(None)
    clock.advance(timedelta(minutes=1))
    store.open(first)  # used again: now the second is the least recently used
    clock.advance(timedelta(minutes=1))
    fourth, _ = store.open(None)
    assert [store.exists(c) for c in (first, second, third, fourth)] == [True, False, True, True]


# -- token refresh (the store makes it happen once) --------------------------------------------------


def _tokens(n: int) -> RefreshedTokens:
    return RefreshedTokens(f"access-{n}", None, f"refresh-{n}", ("launch",))


def test_a_refresh_replaces_the_tokens(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1))
    cookie, _ = store.open(None)
    store.add_launch(cookie, _launch("r1", clock()))
    used: list[str] = []

    def refresh(token: str) -> RefreshedTokens:
        used.append(token)
        return _tokens(2)

    current = store.refresh_launch(cookie, "r1", "access-1", refresh)
    assert current is not None and current.access_token == "access-2"
    stored = store.launch(cookie, "r1")
    assert stored is not None
    assert (stored.access_token, stored.refresh_token, stored.scope) == (
        "access-2",
        "refresh-2",
        ("launch",),
    )
    assert stored.expires_at is None and stored.patient_id == "p-1"
    # Asked again with the old token: already refreshed, nothing is sent.
    again = store.refresh_launch(cookie, "r1", "access-1", refresh)
    assert again is not None and again.access_token == "access-2"
    assert used == ["refresh-1"]


def test_a_failed_refresh_forgets_the_refresh_token(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1))
    cookie, _ = store.open(None)
    store.add_launch(cookie, _launch("r1", clock()))

    def refused(token: str) -> RefreshedTokens:
        raise SmartError(Failure.TOKEN_FAILED, "invalid_grant")

    with pytest.raises(SmartError):
        store.refresh_launch(cookie, "r1", "access-1", refused)
    stored = store.launch(cookie, "r1")
    assert stored is not None and stored.refresh_token is None
    assert store.refresh_launch(cookie, "r1", "access-1", refused) is None  # nothing to use
    assert store.refresh_launch(cookie, "gone", "access-1", refused) is None


def test_concurrent_refreshes_use_the_refresh_token_once(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock, timedelta(hours=1))
    cookie, _ = store.open(None)
    store.add_launch(cookie, _launch("r1", clock()))
    started, release = threading.Event(), threading.Event()
    used: list[str] = []

    def slow_refresh(token: str) -> RefreshedTokens:
        used.append(token)
        started.set()
        assert release.wait(timeout=30)
        return _tokens(2)

    results: list[str | None] = []

    def ask() -> None:
        current = store.refresh_launch(cookie, "r1", "access-1", slow_refresh)
        results.append(current.access_token if current else None)

    first = threading.Thread(target=ask)
    first.start()
    assert started.wait(timeout=30)
    others = [threading.Thread(target=ask) for _ in range(3)]
    for thread in others:
        thread.start()
    release.set()
    for thread in [first, *others]:
        thread.join(timeout=30)
    assert used == ["refresh-1"]
    assert results == ["access-2"] * 4


# -- chart and what-if -------------------------------------------------------------------------------


def test_the_markers_sit_on_the_curve_and_today_is_marked(model: RecurrenceModel) -> None:
    main = curve(model, 42, 2)
    assert main.months[0] == 0 and main.months[-1] == 12 and main.risk[0] == 0
    assert main.risk[main.months.index(12.0)] == pytest.approx(0.606, abs=0.001)
    assert all(lo <= r <= hi for r, lo, hi in zip(main.risk, main.low, main.high, strict=True))
    chart = build_chart(12, main, [(12.0, main.risk[-1])], months_since=4.0)
    (marker,) = chart.markers
    assert f"{marker.x:g},{marker.y:g}" in chart.line
    assert chart.today_label == "Today (4.0 mo)" and chart.band.endswith("Z")
    assert build_chart(12, main, [], months_since=None).today_x is None
    assert build_chart(12, main, [], months_since=13.0).today_x is None


@pytest.mark.parametrize(
    ("minutes", "hb", "expected"),
    [
        ("42", "II", WhatIfInput(42.0, 2)),
        ("20", "1", WhatIfInput(20.0, 1)),
        ("200", "II", "from 5 to 180"),
        ("abc", "II", "a number"),
        ("42", "IV", "outside"),
        (None, None, None),
    ],
)
def test_what_if_inputs_are_checked(
    model: RecurrenceModel, minutes: str | None, hb: str | None, expected: object
) -> None:
    result = parse_what_if(model, minutes, hb)
    if isinstance(expected, str):
        assert isinstance(result, str) and expected in result
    else:
        assert result == expected


# -- logs --------------------------------------------------------------------------------------------


def test_request_logs_lose_the_query_of_smart_urls() -> None:
    record = logging.LogRecord(
        "werkzeug",
        logging.INFO,
        __file__,
        1,
        '%s - - "%s" %s %s',
        ("127.0.0.1", "GET /smart/callback?code=abc&state=def HTTP/1.1", "303", "-"),
        None,
    )
    RedactSmartQueries().filter(record)
    line = record.getMessage()
    assert "code=abc" not in line and "state=def" not in line
    assert "/smart/callback?[redacted]" in line


# -- pages that need no EHR --------------------------------------------------------------------------


@pytest.fixture
def smart_client_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """An app with the SMART app mounted but not configured (no client id)."""
    for name in [n for n in os.environ if n.startswith("SMART_")]:
        monkeypatch.delenv(name)
    app = create_app({"TESTING": True, "AUTH_REQUIRED": False})
    init_smart(app, app.extensions["hfs_cds"].settings)
    yield app
    app.extensions["hfs_cds_smart"].close()
    app.extensions["hfs_cds"].close()


def test_an_app_without_a_client_id_says_it_is_not_set_up(smart_client_app: Flask) -> None:
    response = smart_client_app.test_client().get("/smart/launch?iss=https://x/fhir&launch=1")
    page = Page(response.get_data(as_text=True))
    assert (response.status_code, page.error) == (503, "not-configured")
    assert "SMART_CLIENT_ID" in page.text
    assert "frame-ancestors 'self'" in response.headers["Content-Security-Policy"]
    assert launch_url(smart_client_app, "https://cds.example") is None


def test_init_smart_is_idempotent_and_gives_the_launch_url() -> None:
    app = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "PUBLIC_BASE_URL": "https://cds.example/",
            "SMART_CLIENT_ID": "c",
            "SMART_ALLOWED_ISSUERS": "https://ehr.example/fhir",
        }
    )
    try:
        init_smart(app, app.extensions["hfs_cds"].settings)
        init_smart(app, app.extensions["hfs_cds"].settings)
        assert launch_url(app) == "https://cds.example/smart/launch"
    finally:
        app.extensions["hfs_cds_smart"].close()
        app.extensions["hfs_cds"].close()


@pytest.mark.parametrize("public_base", ["https://cds.example", ""])
def test_the_request_host_is_derived_only_without_a_public_base_url(public_base: str) -> None:
    app = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "PUBLIC_BASE_URL": public_base,
            "SMART_CLIENT_ID": "c",
            "SMART_ALLOWED_ISSUERS": "https://ehr.example/fhir",
        }
    )
    asked: list[bool] = []

    def host_url() -> str:
        asked.append(True)
        return "http://10.0.0.5:8080/"

    try:
        url = launch_url(app, host_url)
    finally:
        app.extensions["hfs_cds_smart"].close()
        app.extensions["hfs_cds"].close()
    if public_base:
        assert (url, asked) == ("https://cds.example/smart/launch", [])
    else:
        assert (url, asked) == ("http://10.0.0.5:8080/smart/launch", [True])


def test_an_unreachable_ehr_is_a_clear_page() -> None:
    from tests.fhir_server import free_port

    dead = f"http://127.0.0.1:{free_port()}/fhir"
    app = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "DEV_MODE": True,
            "SMART_CLIENT_ID": "c",
            "SMART_ALLOWED_ISSUERS": dead,
            "SMART_HTTP_TIMEOUT_SECONDS": 2,
        }
    )
    try:
        init_smart(app, app.extensions["hfs_cds"].settings)
        response = app.test_client().get("/smart/launch", query_string={"iss": dead, "launch": "l"})
    finally:
        app.extensions["hfs_cds_smart"].close()
        app.extensions["hfs_cds"].close()
    page = Page(response.get_data(as_text=True))
    assert (response.status_code, page.error) == (502, "discovery-failed")
    assert "Set-Cookie" not in response.headers


def test_the_settings_refuse_plain_http_outside_development_mode() -> None:
    """create_app mounts the app, so an unsafe SMART setting stops start-up."""
    with pytest.raises(ConfigError, match="SMART_ALLOWED_ISSUERS"):
        create_app(
            {
                "TESTING": True,
                "AUTH_REQUIRED": False,
                "SMART_CLIENT_ID": "c",
                "SMART_ALLOWED_ISSUERS": "http://127.0.0.1:1/fhir",
            }
        )


# -- card and app agree, or say why not (clinical-presentation.md §5) -------------------------------


def test_the_full_app_context_names_every_input_and_the_figure() -> None:
    context = app_context_for(
        "Procedure/rfa1/_history/2",
        hb_grade="Observation/hb1/_history/3",
        operation_time="Observation/dur1/_history/1",
        risk_12m=0.60571,
    )
    assert card_inputs(context, ()) == CardInputs(
        CardProcedure("rfa1", "2"),
        hb_grade=CardReference("Observation", "hb1", "3"),
        operation_time=CardReference("Observation", "dur1", "1"),
        risk_12m=0.6057,
    )
    # The older forms still work, and carry nothing else.
    assert card_inputs('{"procedure": "Procedure/rfa1"}', ()) == CardInputs(
        CardProcedure("rfa1", None)
    )
    assert card_inputs("Procedure/rfa1/_history/2", ()) == CardInputs(CardProcedure("rfa1", "2"))
    # Members that do not parse are dropped one by one; no procedure, nothing to compare.
    odd = json.dumps(
        {
            "procedure": "Procedure/rfa1",
            "hbGrade": "Patient/p1",
            "operationTime": 42,
            "risk12m": "61%",
        }
    )
    assert card_inputs(odd, ()) == CardInputs(CardProcedure("rfa1", None))
    assert card_inputs(json.dumps({"procedure": 1, "risk12m": 0.5}), ()) is None
    assert card_inputs(json.dumps({"procedure": "Procedure/a", "risk12m": 1.5}), ()) == CardInputs(
        CardProcedure("a", None)
    )


def _versioned(resources: list[dict[str, Any]], **versions: str) -> list[dict[str, Any]]:
    """Give resources by id the versionId (and a lastUpdated) the FHIR server would."""
    for r in resources:
        if r["id"] in versions:
            r["meta"] = {"versionId": versions[r["id"]], "lastUpdated": "2026-05-02T14:02:09+08:00"}
    return resources


def _card(**members: Any) -> CardInputs:
    refs = {"hbGrade": "Observation/hb1/_history/1", "operationTime": "Procedure/rfa1/_history/1"}
    context = {"procedure": "Procedure/rfa1/_history/1", **refs, **members}
    parsed = card_inputs(json.dumps({k: v for k, v in context.items() if v is not None}), ())
    assert parsed is not None
    return parsed


def test_nothing_is_said_when_the_card_and_the_record_agree(assessor: Assessor) -> None:
    a = assessor.assess(_versioned(recent_patient(), rfa1="1", hb1="1"), "p1")
    st = present(a)
    assert st.horizon is not None
    assert card_notice(st, _card(risk12m=st.horizon.risk)) is None
    assert card_notice(st, None) is None
    assert card_notice(st, _card(hbGrade=None, operationTime=None)) is None  # an older card


def test_a_corrected_grade_is_said_with_the_old_and_new_value(assessor: Assessor) -> None:
    now = assessor.assess(_versioned(recent_patient(hb="II"), rfa1="1", hb1="2"), "p1")
    before = assessor.assess(_versioned(recent_patient(hb="I"), rfa1="1", hb1="1"), "p1")
    st, was = present(now), present(before)
    assert st.horizon and was.horizon
    card = _card(risk12m=was.horizon.risk)
    updated = {"Observation/hb1": "2026-05-02T14:02:09+08:00"}

    notice = card_notice(st, card, previous=before, updated=updated)

    assert notice is not None
    assert notice.changes == (
        "House-Brackmann grade corrected from I to II at 2026-05-02 06:02 UTC "
        "(Observation/hb1 version 1 → 2).",
    )
    assert notice.figures == "The card showed >95% by 12 months; this page shows 61%."
    assert notice.text.endswith("This page uses the current record.")
    # Without the card's version from the EHR: the change, without the old value.
    blind = card_notice(st, card, previous=None, updated=updated)
    assert blind is not None and blind.changes == (
        "The House-Brackmann grade on record has changed since the card "
        "(Observation/hb1 version 1 → 2 at 2026-05-02 06:02 UTC).",
    )


def test_a_procedure_edited_without_changing_the_inputs_is_said_once(assessor: Assessor) -> None:
    before = assessor.assess(_versioned(recent_patient(), rfa1="1", hb1="1"), "p1")
    now = assessor.assess(_versioned(recent_patient(), rfa1="2", hb1="1"), "p1")
    st = present(now)
    assert st.horizon is not None
    notice = card_notice(st, _card(risk12m=st.horizon.risk), previous=before)
    assert notice is not None
    assert notice.changes == (
        "Procedure/rfa1 was updated since the card (Procedure/rfa1 version 1 → 2); "
        "the operation time is still 42 min.",
    )
    assert notice.figures == "The 12-month estimate is the same as on the card (61%)."


def test_a_figure_that_moved_is_said_even_when_no_input_did(assessor: Assessor) -> None:
    st = present(assessor.assess(_versioned(recent_patient(), rfa1="1", hb1="1"), "p1"))
    notice = card_notice(st, _card(risk12m=0.35))
    assert notice is not None
    assert notice.changes == ("The record or the model has changed since the card was shown.",)
    assert notice.figures == "The card showed 35% by 12 months; this page shows 61%."


def test_a_grade_that_no_longer_scores_is_said(assessor: Assessor) -> None:
    st = present(assessor.assess(_versioned(recent_patient(hb=None), rfa1="1"), "p1"))
    notice = card_notice(st, _card(risk12m=0.6057))
    assert notice is not None
    assert notice.changes == (
        "The card used the House-Brackmann grade in Observation/hb1/_history/1; the current "
        "record gives none the model can use.",
    )
    assert notice.figures == (
        "The card showed 61% by 12 months; from the current record the risk cannot be "
        "calculated (see below)."
    )


def test_the_app_queries_only_what_its_scopes_grant(assessor: Assessor) -> None:
    """The follow-up-orders search serves the card's suggestion; the app is granted Patient,
    Procedure, Observation and Condition only, and a refused search would fail the whole page."""
    from cds_service.fhir import FhirAllowlist, FhirClient
    from cds_service.smart.record import RecordReader

    reader = RecordReader(assessor, FhirClient(FhirAllowlist(())), lambda: datetime.now())
    granted = {scope.split("/")[1].split(".")[0] for scope in DEFAULT_SCOPES if "/" in scope}
    queried = {query.split("?")[0] for query in reader.queries("p1").values()}
    assert queried and queried <= granted
