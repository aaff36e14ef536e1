"""The SMART app end to end against real processes: the OAuth 2 server (oauth2-mock-server behind the
EHR shim), the FHIR server (sekmet-fhir) seeded with test patients, and the app served for real.

A ``requests.Session`` plays the browser. ``launch()`` follows every redirect
(``/smart/launch`` → authorize → ``/smart/callback`` → token → risk page); ``to_callback()`` stops
at the callback URL so a test can tamper with it. The shim's request log proves what the app sent.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from cds_service.assessment import Assessor
from cds_service.gather.app_context import app_context_for
from cds_service.model import RecurrenceModel
from cds_service.presentation import percent, percent_range, present, tier_for
from cds_service.presentation.risk_assessment import risk_assessment
from cds_service.smart.oauth import new_pkce, s256
from tests import fhir_builders as fb
from tests.fhir_server import FhirServerProcess
from tests.hook_calls import HookCaller
from tests.smart.pages import Page
from tests.smart.served import FakeClock, Seed, ServedApp, ServeSmart
from tests.smart.shim import EhrShim

pytest_plugins = ("tests.smart.fixtures",)
pytestmark = pytest.mark.integration

TIMEOUT = 10


# -- helpers -----------------------------------------------------------------------------------------


def launch(
    browser: requests.Session,
    served: ServedApp,
    shim: EhrShim,
    patient: str,
    iss: str | None = None,
    **context: Any,
) -> requests.Response:
    """An EHR launch for ``patient`` followed to the end, as a browser would."""
    launch_id = shim.new_launch(patient, **context)
    return browser.get(
        served.url("/smart/launch"),
        params={"iss": iss or shim.fhir_base, "launch": launch_id},
        timeout=TIMEOUT,
    )


def to_callback(browser: requests.Session, served: ServedApp, shim: EhrShim, patient: str) -> str:
    """An EHR launch followed up to the redirect back to the app: the callback URL, not yet visited."""
    launch_id = shim.new_launch(patient)
    started = browser.get(
        served.url("/smart/launch"),
        params={"iss": shim.fhir_base, "launch": launch_id},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert started.status_code == 302, started.text
    authorized = browser.get(started.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
    assert authorized.status_code == 302, authorized.text
    location: str = authorized.headers["Location"]
    assert location.startswith(served.url("/smart/callback?"))
    return location


def with_query(url: str, **changes: str | None) -> str:
    """``url`` with query parameters replaced (None removes one)."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def entries(shim: EhrShim, server: str, path: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in shim.requests_log()
        if e["server"] == server and (path is None or e["path"] == path)
    ]


def fhir_requests(shim: EhrShim) -> list[dict[str, Any]]:
    """FHIR data requests (discovery excluded)."""
    return [
        e
        for e in entries(shim, "ehr")
        if e["path"].startswith("/fhir/") and "/.well-known/" not in e["path"]
    ]


def assert_page(response: requests.Response, status: int, error: str) -> Page:
    page = Page(response.text)
    assert (response.status_code, page.error) == (status, error), page.text[:1500]
    assert "Traceback" not in response.text
    return page


# -- the flows ---------------------------------------------------------------------------------------


def test_ehr_launch_shows_the_assessment_and_sends_pkce_s256(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, assessor: Assessor, clock: FakeClock
) -> None:
    resources = seed("smart-ehr-1")
    served = serve_smart()
    browser = requests.Session()
    response = launch(browser, served, shim, "smart-ehr-1")

    assert response.status_code == 200
    page = Page(response.text)
    assert page.status == "scored"
    expected = assessor.assess(resources, "smart-ehr-1", as_of=clock())
    assert page.risks == {f"{p.month:g}": round(p.risk, 4) for p in expected.risks}
    assert page.risks["12"] == pytest.approx(0.606, abs=0.001)  # 42 min, HB II: the pinned value
    assert page.has_testid("patient-banner") and "Wei CHEN" in page.text
    # The page's URL carries no code or state, and no token reaches the page.
    assert urlsplit(response.url).query == ""
    assert "eyJ" not in response.text  # the mock's tokens are JWTs

    (authorize,) = entries(shim, "auth", "/authorize")
    query = authorize["query"]
    assert query["response_type"] == "code"
    assert query["aud"] == shim.fhir_base
    assert query["redirect_uri"] == served.url("/smart/callback")
    assert query["launch"]
    assert set(query["scope"].split()) >= {"launch", "patient/Observation.rs", "online_access"}
    assert len(query["state"]) >= 43  # 256 bits, base64url
    assert query["code_challenge_method"] == "S256"
    (token,) = entries(shim, "auth", "/token")
    form = token["form"]
    assert token["status"] == 200
    assert form["grant_type"] == "authorization_code"
    assert s256(form["code_verifier"]) == query["code_challenge"]  # the right verifier, S256
    assert 43 <= len(form["code_verifier"]) <= 128
    assert form["client_id"] == served.app.extensions["hfs_cds_smart"].settings.client_id
    assert token["basic_user"] is None  # public client: no client authentication
    # Every FHIR call carried the access token issued by that exchange.
    fhir = fhir_requests(shim)
    assert fhir and {e["token_serial"] for e in fhir} == {token["access_serial"]}


def test_standalone_launch_asks_for_a_patient(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-standalone-1", minutes=25, hb="III")
    shim.configure(standalone_patient="smart-standalone-1")
    served = serve_smart(SMART_ALLOWED_ISSUERS="", SMART_STANDALONE_FHIR_BASE=shim.fhir_base)

    response = requests.Session().get(served.url("/smart/launch"), timeout=TIMEOUT)

    page = Page(response.text)
    assert (response.status_code, page.status) == (200, "scored")
    assert "smart-standalone-1" in page.text
    (authorize,) = entries(shim, "auth", "/authorize")
    scopes = authorize["query"]["scope"].split()
    assert "launch/patient" in scopes and "launch" not in scopes
    assert "launch" not in authorize["query"]
    assert authorize["query"]["aud"] == shim.fhir_base


def test_confidential_client_authenticates_with_http_basic(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-confidential-1")
    served = serve_smart(SMART_CLIENT_SECRET="s3cret-for-tests")

    response = launch(requests.Session(), served, shim, "smart-confidential-1")

    assert Page(response.text).status == "scored"
    (token,) = entries(shim, "auth", "/token")
    assert token["basic_user"] == served.app.extensions["hfs_cds_smart"].settings.client_id
    assert token["basic_ok"] is True
    assert "client_secret" not in token["form"] and "client_id" not in token["form"]


def test_discovery_is_fetched_once_and_cached(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-cache-1")
    served = serve_smart()
    browser = requests.Session()
    for _ in range(2):
        assert launch(browser, served, shim, "smart-cache-1").status_code == 200
    discovery = entries(shim, "ehr", "/fhir/.well-known/smart-configuration")
    assert len(discovery) == 1
    assert len(entries(shim, "auth", "/token")) == 2


# -- state -------------------------------------------------------------------------------------------


def test_tampered_state_is_refused(serve_smart: ServeSmart, shim: EhrShim, seed: Seed) -> None:
    seed("smart-state-1")
    served = serve_smart()
    browser = requests.Session()
    callback = to_callback(browser, served, shim, "smart-state-1")
    state = parse_qs(urlsplit(callback).query)["state"][0]
    tampered = state[:-1] + ("A" if state[-1] != "A" else "B")

    response = browser.get(with_query(callback, state=tampered), timeout=TIMEOUT)

    assert_page(response, 400, "state-invalid")
    assert entries(shim, "auth", "/token") == []  # the code was never exchanged


def test_missing_state_is_refused(serve_smart: ServeSmart, shim: EhrShim, seed: Seed) -> None:
    seed("smart-state-2")
    served = serve_smart()
    browser = requests.Session()
    callback = to_callback(browser, served, shim, "smart-state-2")

    response = browser.get(with_query(callback, state=None), timeout=TIMEOUT)

    assert_page(response, 400, "state-missing")
    assert entries(shim, "auth", "/token") == []


def test_reused_state_is_refused(serve_smart: ServeSmart, shim: EhrShim, seed: Seed) -> None:
    seed("smart-state-3")
    served = serve_smart()
    browser = requests.Session()
    callback = to_callback(browser, served, shim, "smart-state-3")
    assert browser.get(callback, timeout=TIMEOUT).status_code == 200

    replay = browser.get(callback, timeout=TIMEOUT)

    assert_page(replay, 400, "state-used")
    assert len(entries(shim, "auth", "/token")) == 1


def test_state_is_bound_to_the_browser_session(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-state-4")
    served = serve_smart()
    victim = requests.Session()
    callback = to_callback(victim, served, shim, "smart-state-4")
    attacker = requests.Session()
    to_callback(attacker, served, shim, "smart-state-4")  # a session of its own

    assert_page(attacker.get(callback, timeout=TIMEOUT), 400, "state-invalid")
    assert_page(requests.get(callback, timeout=TIMEOUT), 400, "no-session")  # no cookie at all
    assert browser_still_works(victim, callback)


def browser_still_works(browser: requests.Session, callback: str) -> bool:
    """The rightful browser can still complete its own launch after the refused attempts."""
    return Page(browser.get(callback, timeout=TIMEOUT).text).status == "scored"


# -- launch and authorization failures ---------------------------------------------------------------


def test_iss_not_on_the_allowlist_is_refused_before_anything_is_fetched(
    serve_smart: ServeSmart, shim: EhrShim
) -> None:
    served = serve_smart()
    response = requests.get(
        served.url("/smart/launch"),
        params={"iss": shim.unlisted_base, "launch": "xyz"},
        timeout=TIMEOUT,
    )
    page = assert_page(response, 403, "iss-not-allowed")
    assert shim.unlisted_base in page.text
    assert shim.requests_log() == []  # not even .well-known/smart-configuration
    assert "Set-Cookie" not in response.headers


def test_launch_without_parameters_and_without_standalone_is_explained(
    serve_smart: ServeSmart, shim: EhrShim
) -> None:
    served = serve_smart()
    assert_page(
        requests.get(served.url("/smart/launch"), timeout=TIMEOUT), 400, "launch-parameters"
    )
    only_iss = requests.get(
        served.url("/smart/launch"), params={"iss": shim.fhir_base}, timeout=TIMEOUT
    )
    assert_page(only_iss, 400, "launch-parameters")
    assert shim.requests_log() == []


def test_authorization_error_redirect_is_shown(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-denied-1")
    shim.configure(authorize_error="access_denied")
    served = serve_smart()

    response = launch(requests.Session(), served, shim, "smart-denied-1")

    page = assert_page(response, 403, "authorization-denied")
    assert "access_denied" in page.text
    assert entries(shim, "auth", "/token") == []
    assert fhir_requests(shim) == []


def test_token_error_is_shown(serve_smart: ServeSmart, shim: EhrShim, seed: Seed) -> None:
    seed("smart-token-error-1")
    shim.configure(token_error="invalid_grant")
    served = serve_smart()
    page = assert_page(
        launch(requests.Session(), served, shim, "smart-token-error-1"), 502, "token-failed"
    )
    assert "invalid_grant" in page.text
    assert fhir_requests(shim) == []


def test_a_wrong_code_verifier_is_rejected_by_the_server(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mock really checks PKCE: a verifier that does not match the challenge is refused.

    (With the app's own pairs every other flow passes, so the app sends the right verifier.)
    """
    seed("smart-pkce-1")
    served = serve_smart()
    monkeypatch.setattr(
        "cds_service.smart.views.new_pkce", lambda: (new_pkce()[0], new_pkce()[1])
    )  # the verifier of one fresh pair, the challenge of another

    response = launch(requests.Session(), served, shim, "smart-pkce-1")

    assert_page(response, 502, "token-failed")
    (token,) = entries(shim, "auth", "/token")
    assert token["status"] == 400
    assert fhir_requests(shim) == []


def test_token_without_patient_is_a_clear_error(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-no-patient-1")
    shim.configure(omit_patient=True)
    served = serve_smart()
    assert_page(launch(requests.Session(), served, shim, "smart-no-patient-1"), 502, "no-patient")
    assert fhir_requests(shim) == []


@pytest.mark.parametrize(
    ("granted", "works"),
    [
        ("launch patient/Patient.rs", False),  # too little: no Procedure/Observation/Condition
        ("launch patient/*.read", True),  # SMART v1 wildcard, as older EHRs grant it
        (
            "launch patient/Patient.r patient/Procedure.rs patient/Observation.rs "
            "patient/Condition.rs",
            True,
        ),
    ],
)
def test_the_granted_scope_is_read(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, granted: str, works: bool
) -> None:
    seed("smart-scope-1")
    shim.configure(granted_scope=granted)
    served = serve_smart()
    response = launch(requests.Session(), served, shim, "smart-scope-1")
    if works:
        assert Page(response.text).status == "scored"
    else:
        page = assert_page(response, 403, "scope-insufficient")
        assert "Procedure (read and search)" in page.text


# -- tokens over time, FHIR failures -----------------------------------------------------------------


def test_an_expired_access_token_is_refreshed(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, clock: FakeClock
) -> None:
    seed("smart-refresh-1")
    shim.configure(expires_in=300)
    served = serve_smart()
    browser = requests.Session()
    first = launch(browser, served, shim, "smart-refresh-1")
    assert Page(first.text).status == "scored"
    (exchange,) = entries(shim, "auth", "/token")
    first_load = len(fhir_requests(shim))  # the Patient read and the prefetch searches

    clock.advance(timedelta(minutes=10))
    again = browser.get(first.url, timeout=TIMEOUT)

    assert Page(again.text).status == "scored"
    exchange, refresh = entries(shim, "auth", "/token")
    assert refresh["form"]["grant_type"] == "refresh_token"
    assert refresh["status"] == 200 and "scope" not in refresh["form"]  # never widened
    serials = [e["token_serial"] for e in fhir_requests(shim)]
    assert len(serials) == 2 * first_load
    assert set(serials[:first_load]) == {exchange["access_serial"]}
    assert set(serials[first_load:]) == {refresh["access_serial"]}


def test_an_expired_access_token_without_refresh_token_asks_to_relaunch(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, clock: FakeClock
) -> None:
    seed("smart-refresh-2")
    shim.configure(expires_in=300, omit_refresh_token=True)
    served = serve_smart()
    browser = requests.Session()
    first = launch(browser, served, shim, "smart-refresh-2")
    assert Page(first.text).status == "scored"
    fhir_before = len(fhir_requests(shim))

    clock.advance(timedelta(minutes=10))
    page = assert_page(browser.get(first.url, timeout=TIMEOUT), 401, "session-expired")

    assert "open the app again" in page.text.lower()
    assert len(fhir_requests(shim)) == fhir_before  # the expired token was not used
    assert len(entries(shim, "auth", "/token")) == 1


@pytest.mark.parametrize(
    ("status", "grants"),
    [
        (401, ["authorization_code", "refresh_token"]),  # a refused token is refreshed once
        (403, ["authorization_code"]),  # a refusal of access is not a token problem
    ],
)
def test_fhir_refusing_the_token_is_a_clear_page(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, status: int, grants: list[str]
) -> None:
    seed(f"smart-fhir-{status}-1")
    shim.configure(fhir_status=status)
    served = serve_smart()

    response = launch(requests.Session(), served, shim, f"smart-fhir-{status}-1")

    page = assert_page(response, 403, "fhir-unauthorized")
    assert f"HTTP {status}" in page.text
    assert [e["form"]["grant_type"] for e in entries(shim, "auth", "/token")] == grants


def test_no_ablation_on_record_is_a_clear_page(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-no-rfa-1", resources=[fb.hfs_condition(patient="smart-no-rfa-1")])
    served = serve_smart()
    response = launch(requests.Session(), served, shim, "smart-no-rfa-1")
    page = Page(response.text)
    assert (response.status_code, page.status) == (200, "not-applicable")
    assert "No ablation to assess" in page.text and "005M3ZZ" in page.text
    assert page.has_testid("patient-banner")


def test_an_ablation_that_cannot_be_scored_says_what_to_fix(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-no-hb-1", hb=None)
    served = serve_smart()
    page = Page(launch(requests.Session(), served, shim, "smart-no-hb-1").text)
    assert page.status == "not-scored"
    assert "To fix:" in page.text
    assert any(e.get("data-reason") == "no-hb-in-window" for e in page.elements)


def test_an_unknown_page_reference_is_a_clear_page(serve_smart: ServeSmart) -> None:
    served = serve_smart()
    response = requests.get(served.url("/smart/app/not-a-launch/"), timeout=TIMEOUT)
    assert_page(response, 404, "launch-not-found")


# -- context -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "reference", "absent", "other-procedure"])
def test_app_context_is_used_when_present_and_not_required(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, form: str
) -> None:
    patient = f"smart-appctx-{form}"
    seed(patient)
    served = serve_smart()
    procedure = f"Procedure/rfa1-{patient}/_history/1"
    app_context = {
        "json": json.dumps({"procedure": procedure}),
        "reference": procedure,
        "absent": None,
        "other-procedure": json.dumps({"procedure": "Procedure/some-other"}),
    }[form]

    response = launch(requests.Session(), served, shim, patient, app_context=app_context)

    page = Page(response.text)
    assert page.status == "scored"  # computed from FHIR either way
    if form in ("json", "reference"):
        assert f"opened from the CDS card about {procedure}" in page.text
        assert not page.has_testid("card-notice")
    elif form == "absent":
        assert "opened from the CDS card" not in page.text
    else:
        assert page.has_testid("card-notice")
        assert "Procedure/some-other" in page.text


def test_the_banner_is_left_to_the_ehr_when_it_says_so(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-banner-1")
    served = serve_smart()
    response = launch(requests.Session(), served, shim, "smart-banner-1", need_patient_banner=False)
    page = Page(response.text)
    assert page.status == "scored" and not page.has_testid("patient-banner")


# -- sibling endpoints -------------------------------------------------------------------------------


def test_the_json_sibling_is_the_same_assessment(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, assessor: Assessor, clock: FakeClock
) -> None:
    resources = seed("smart-json-1")
    served = serve_smart()
    browser = requests.Session()
    page = launch(browser, served, shim, "smart-json-1")

    response = browser.get(page.url + "assessment.json", timeout=TIMEOUT)

    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assessment = assessor.assess(resources, "smart-json-1", as_of=clock())
    expected = assessment.to_json()
    # The page's texts, from the same presentation layer the card uses.
    display, st = body.pop("display"), present(assessment)
    assert [(r["text"], r["rangeText"]) for r in display["risks"]] == [
        (r.text, r.range_text) for r in st.risks
    ]
    assert st.estimate_tier and st.schedule_tier
    assert display["estimateTier"]["id"] == st.estimate_tier.id
    assert display["scheduleTier"]["id"] == st.schedule_tier.id
    for key, value in {
        "summary": st.summary,
        "riskSentence": st.risk_sentence,
        "schedule": st.schedule_text,
        "advice": st.advice,
        "uncertainty": st.uncertainty_note,
        "caveat": st.caveat,
    }.items():
        assert display[key] == value, key
    assert [r["date"] for r in display["reviewsAhead"]] == [
        r.on.isoformat() for r in st.reviews_ahead
    ]
    assert "cardNotice" not in display
    # The RiskAssessment the card offers to record, as of the page's moment.
    fhir = body.pop("riskAssessment")
    offered = risk_assessment(st, "smart-json-1")
    assert fhir.pop("occurrenceDateTime") and offered.pop("occurrenceDateTime")
    assert fhir == offered
    for text in (display["schedule"], display["advice"], display["riskSentence"]):
        assert text in Page(page.text).text
    body.pop("asOf"), expected.pop("asOf"), body.pop("monthsSinceProcedure")
    expected.pop("monthsSinceProcedure")
    body.pop("conditionalRisk", None), expected.pop("conditionalRisk", None)
    assert body == expected
    assert {str(r["month"]): r["risk"] for r in body["risks"]} == Page(page.text).risks
    without_cookie = requests.get(page.url + "assessment.json", timeout=TIMEOUT)
    assert without_cookie.status_code == 404
    assert without_cookie.json()["error"] == "launch-not-found"


def test_what_if_moves_the_numbers(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, model: RecurrenceModel
) -> None:
    seed("smart-what-if-1")
    served = serve_smart()
    browser = requests.Session()
    page_url = launch(browser, served, shim, "smart-what-if-1").url
    point, low, high = model.risk_with_range(20, 1, [3, 6, 12])

    rendered = browser.get(page_url, params={"minutes": "20", "hb": "I"}, timeout=TIMEOUT)
    cells = {
        e["data-what-if-month"]: float(e["data-risk"])
        for e in Page(rendered.text).elements
        if "data-what-if-month" in e
    }
    assert cells == {"3": round(point[0], 4), "6": round(point[1], 4), "12": round(point[2], 4)}

    answer = browser.get(
        page_url + "what-if.json", params={"minutes": "20", "hb": "1"}, timeout=TIMEOUT
    )
    body = answer.json()
    assert [r["risk"] for r in body["risks"]] == [round(v, 4) for v in point]
    assert [r["high"] for r in body["risks"]] == [round(v, 4) for v in high]
    # Tiers as the presentation layer chooses them: estimate from the point, schedule from the top.
    assert body["estimateTier"] == tier_for(model.card, float(point[2])).id
    assert body["scheduleTier"] == tier_for(model.card, float(high[2])).id
    assert [r["text"] for r in body["risks"]] == [percent(float(v)) for v in point]
    assert [r["rangeText"] for r in body["risks"]] == [
        percent_range(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)
    ]
    assert body["line"].startswith("M")

    bad = browser.get(
        page_url + "what-if.json", params={"minutes": "20", "hb": "IV"}, timeout=TIMEOUT
    )
    assert bad.status_code == 400 and "outside" in bad.json()["error"]
    shown = browser.get(page_url, params={"minutes": "500", "hb": "II"}, timeout=TIMEOUT)
    assert "Operation time must be from 5 to 180 minutes." in Page(shown.text).text


# -- what the browser and the logs get ---------------------------------------------------------------


def test_cookie_and_headers_suit_an_ehr_iframe(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    seed("smart-headers-1")
    served = serve_smart(SMART_COOKIE_SECURE=True)
    launch_id = shim.new_launch("smart-headers-1")
    response = requests.get(
        served.url("/smart/launch"),
        params={"iss": shim.fhir_base, "launch": launch_id},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-hfs_smart_sid=")  # issue 15 item 6: Path=/, no Domain
    for attribute in ("HttpOnly", "Secure", "SameSite=None", "Partitioned", "Path=/;"):
        assert attribute in cookie + ";"
    assert "Domain" not in cookie
    assert "X-Frame-Options" not in response.headers
    csp = response.headers["Content-Security-Policy"]
    origin = shim.fhir_base.rsplit("/", 1)[0]
    assert f"frame-ancestors 'self' {origin}" in csp
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_tokens_codes_and_patient_ids_are_never_logged(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed, caplog: pytest.LogCaptureFixture
) -> None:
    seed("smart-logs-1")
    served = serve_smart()
    browser = requests.Session()
    with caplog.at_level(logging.DEBUG):
        callback = to_callback(browser, served, shim, "smart-logs-1")
        page = browser.get(callback, timeout=TIMEOUT)
        shim.configure(fhir_status=401)
        browser.get(page.url, timeout=TIMEOUT)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    state = parse_qs(urlsplit(callback).query)["state"][0]
    (token,) = [e for e in entries(shim, "auth", "/token") if "code" in e["form"]]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "SMART launch completed" in logged
    for secret in (code, state, token["form"]["code_verifier"], "smart-logs-1", "eyJ"):
        assert secret not in logged


# -- card and app agree, or say why not (clinical-presentation.md §5) -------------------------------


def _from_server(fhir_server: FhirServerProcess, resources: list[dict[str, Any]]) -> list[Any]:
    """The resources as the FHIR server holds them (its versionId and lastUpdated)."""
    out = []
    for r in resources:
        if r["resourceType"] == "Patient":
            continue
        answer = requests.get(f"{fhir_server.base}/{r['resourceType']}/{r['id']}", timeout=TIMEOUT)
        answer.raise_for_status()
        out.append(answer.json())
    return out


def _card_for(served: ServedApp, resources: list[Any], patient: str) -> dict[str, Any]:
    """The patient-view card the same service gives for these resources."""
    answer = HookCaller(served.app.test_client()).call("patient-view", resources, patient=patient)
    (card,) = answer.get_json()["cards"]
    assert isinstance(card, dict)
    return card


def test_a_grade_corrected_after_the_card_is_said_above_the_numbers(
    serve_smart: ServeSmart,
    shim: EhrShim,
    seed: Seed,
    fhir_server: FhirServerProcess,
) -> None:
    """The card was built on HB I; the grade is then corrected to II: the page opened from that
    card says what changed, the card's figure and its own, before any number."""
    patient = "smart-corrected-1"
    seeded = seed(patient, hb="I")
    served = serve_smart()
    card = _card_for(served, _from_server(fhir_server, seeded), patient)
    (link,) = [x for x in card["links"] if x["type"] == "smart"]
    app_context = json.loads(link["appContext"])
    hb_id = f"hb1-{patient}"
    assert app_context["hbGrade"] == f"Observation/{hb_id}/_history/1"
    assert card["summary"].startswith("Hemifacial spasm recurrence after RFA: >95% by 12 months")

    corrected = next(r for r in seeded if r["id"] == hb_id)
    corrected["valueCodeableConcept"] = fb.codeable(
        (fb.HB_SYSTEM, "II", "House-Brackmann grade II")
    )
    fhir_server.put_all([corrected])
    now = requests.get(f"{fhir_server.base}/Observation/{hb_id}", timeout=TIMEOUT).json()
    assert now["meta"]["versionId"] == "2"

    browser = requests.Session()
    response = launch(browser, served, shim, patient, app_context=link["appContext"])

    page = Page(response.text)
    assert page.status == "scored" and page.has_testid("card-notice")
    when = datetime.fromisoformat(now["meta"]["lastUpdated"]).astimezone(UTC)
    expected = (
        f"House-Brackmann grade corrected from I to II at {when:%Y-%m-%d %H:%M} UTC "
        f"(Observation/{hb_id} version 1 → 2)."
    )
    assert expected in page.text
    assert "The card showed >95% by 12 months; this page shows 61%." in page.text
    assert "This page uses the current record." in page.text
    html = response.text
    assert html.index('data-testid="card-notice"') < html.index('data-testid="risk-table"')
    # The EHR's history was asked for the card's version of the grade, once, with the launch token.
    vreads = [e for e in fhir_requests(shim) if "/_history/" in e["path"]]
    assert [e["path"] for e in vreads] == [f"/fhir/Observation/{hb_id}/_history/1"]

    # The app's JSON carries the same notice.
    display = browser.get(response.url + "assessment.json", timeout=TIMEOUT).json()["display"]
    assert expected in display["cardNotice"]["changes"]
    assert display["cardNotice"]["figures"] == (
        "The card showed >95% by 12 months; this page shows 61%."
    )

    # Opened from a card that matches the record: no notice.
    fresh = _card_for(served, _from_server(fhir_server, seeded), patient)
    (fresh_link,) = [x for x in fresh["links"] if x["type"] == "smart"]
    again = Page(launch(browser, served, shim, patient, app_context=fresh_link["appContext"]).text)
    assert again.status == "scored" and not again.has_testid("card-notice")


def test_without_the_history_the_notice_still_names_the_versions(
    serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    """A card naming a version the EHR cannot give back: the change is said without old values."""
    patient = "smart-nohistory-1"
    seed(patient)
    served = serve_smart()
    context = app_context_for(
        f"Procedure/rfa1-{patient}/_history/1",
        hb_grade=f"Observation/hb1-{patient}/_history/7",  # a version the server never had
        risk_12m=0.6057,
    )
    page = Page(launch(requests.Session(), served, shim, patient, app_context=context).text)
    assert page.status == "scored"
    assert (
        f"The House-Brackmann grade on record has changed since the card "
        f"(Observation/hb1-{patient} version 7 → 1"
    ) in page.text
    assert "The 12-month estimate is the same as on the card (61%)." in page.text
