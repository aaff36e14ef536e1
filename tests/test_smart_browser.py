"""One real browser: headless Chromium (Debian's ``chromium``) driven by Playwright completes an EHR
launch inside a cross-site iframe of the simulated EHR, and the page shows the card's numbers.

The EHR page is served as ``localhost`` and the app as ``127.0.0.1``: two different sites, so the
session cookie must be ``SameSite=None; Secure`` (Chromium treats loopback http as secure) and the
app's ``frame-ancestors`` must name the EHR, exactly as in a real cross-site EHR iframe.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from cds_service import create_app
from cds_service.gather.app_context import app_context_for
from cds_service.model import RecurrenceModel
from cds_service.presentation import percent
from tests.hook_calls import HookCaller
from tests.smart.served import FakeClock, Seed, ServeSmart
from tests.smart.shim import EhrShim

pytest_plugins = ("tests.smart.fixtures",)
pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PATIENT = "smart-browser-1"
TIMEOUT_MS = 20_000


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium (never a downloaded browser); ``scripts/ci-chromium.sh`` installs it."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run scripts/ci-chromium.sh (as root)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


def test_ehr_launch_in_an_iframe_shows_the_cards_numbers(
    chromium: Browser,
    serve_smart: ServeSmart,
    shim: EhrShim,
    seed: Seed,
    clock: FakeClock,
    model: RecurrenceModel,
) -> None:
    resources = seed(PATIENT)
    served = serve_smart(
        SMART_ALLOWED_ISSUERS=shim.fhir_base_localhost,
        SMART_COOKIE_SECURE=True,  # the production default
    )
    procedure = next(r for r in resources if r["resourceType"] == "Procedure")
    grade = next(r for r in resources if r["resourceType"] == "Observation")
    # The card's appContext in full: the inputs it used (as the server versions them) and its figure.
    launch = shim.new_launch(
        PATIENT,
        app_context=app_context_for(
            f"Procedure/{procedure['id']}/_history/1",
            hb_grade=f"Observation/{grade['id']}/_history/1",
            operation_time=f"Procedure/{procedure['id']}/_history/1",
            risk_12m=model.risk_with_range(42, 2, [12])[0][0],
        ),
    )

    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    console_errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console_errors.append(message.text)

    page.on("console", on_console)
    page.goto(shim.ehr_page(launch, served.url("/smart/launch"), host="localhost"))
    app = page.frame_locator("#smart-app")
    table = app.locator("[data-testid=risk-table]")
    table.wait_for(timeout=TIMEOUT_MS)

    # The numbers on the page, as shown and as data.
    shown: dict[str, tuple[float, str]] = {}
    for row in table.locator("tbody tr").all():
        month = row.get_attribute("data-month") or ""
        shown[month] = (
            float(row.get_attribute("data-risk") or "nan"),
            row.locator("td").first.inner_text(),
        )

    # The card for the same patient from the CDS Hooks service.
    cds = create_app({"TESTING": True, "AUTH_REQUIRED": False, "CLOCK": clock})
    try:
        response = HookCaller(cds.test_client()).call(
            "patient-view", resources[1:], patient=PATIENT
        )
    finally:
        cds.extensions["hfs_cds"].close()
    (card,) = response.get_json()["cards"]
    card_risks = card["extension"]["org.example.hfs-cds.assessment"]["risks"]
    assert {str(r["month"]): r["risk"] for r in card_risks} == {m: v[0] for m, v in shown.items()}
    for risk in card_risks:
        text = percent(risk["risk"])
        assert shown[str(risk["month"])][1] == text
        assert f"**{text}**" in card["detail"]
    assert f"{shown['12'][1]} by 12 months" in card["summary"]

    # The same estimate tier, risk sentence and schedule as the card, and no difference notice.
    tier = app.locator("[data-testid=tier]").inner_text()  # "Intermediate estimate"
    assert f"({tier.lower()})" in card["summary"]
    assert app.locator("[data-testid=risk-sentence]").inner_text() in card["detail"].replace(
        "**", ""
    )
    assert app.locator("[data-testid=schedule]").inner_text() in card["detail"]
    assert app.locator("[data-testid=card-notice]").count() == 0
    assert app.locator("[data-testid=patient-banner]").is_visible()
    assert app.locator("[data-testid=risk-chart]").is_visible()
    assert app.locator("[data-testid=assumptions] li").count() == len(model.card.assumptions)
    assert app.locator("[data-testid=limitations] li").count() == len(model.card.limitations)
    assert f"Procedure/{procedure['id']}" in app.locator(".summary__sub").inner_text()

    # The session cookie survived the cross-site iframe with the production attributes.
    (cookie,) = [c for c in context.cookies() if c["name"] == "__Host-hfs_smart_sid"]
    assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "None")

    ARTIFACTS.mkdir(exist_ok=True)
    _screenshot(page, ARTIFACTS / "smart-risk-page.png")

    # What-if: the page's script asks the server's model and updates the numbers in place.
    app.locator("select[name=hb]").select_option("I")
    expected = model.risk_with_range(42, 1, [3, 6, 12])[0]
    cell = app.locator("[data-what-if-month='12'] .value")
    cell.filter(has_text=percent(float(expected[2]))).wait_for(timeout=TIMEOUT_MS)
    assert app.locator("#what-if-line").get_attribute("visibility") is None
    _screenshot(page, ARTIFACTS / "smart-risk-page-what-if.png")

    assert console_errors == []  # no CSP violation, no script error
    context.close()


def test_the_public_model_card_page_renders(
    chromium: Browser, serve_smart: ServeSmart, model: RecurrenceModel
) -> None:
    """``/model-card`` in a real browser, with no session: styled (CSP allows its style sheet),
    every limitation listed, nothing blocked."""
    served = serve_smart()
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    console_errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # The browser's own favicon request (this service has none) is the one allowed 404.
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            console_errors.append(message.text)

    page.on("console", on_console)
    response = page.goto(served.url("/model-card"))
    assert response is not None and response.status == 200
    assert page.locator("[data-testid=limitations] li").count() == len(model.card.limitations)
    # The style sheet applied: the app bar has its colour.
    bar = page.locator(".app-bar").evaluate("el => getComputedStyle(el).backgroundColor")
    assert bar == "rgb(31, 78, 140)"
    assert context.cookies() == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "model-card-page.png"), full_page=True)
    assert console_errors == []
    context.close()


def _screenshot(page: Page, path: Path) -> None:
    """The whole EHR page with the app's frame: the frame as tall as the app's page, and a viewport
    as tall as everything, because Chromium paints a cross-site (out-of-process) iframe only inside
    the viewport in full-page captures."""
    frame = page.frame(name="smart-app")
    assert frame is not None
    content = int(frame.evaluate("document.documentElement.scrollHeight"))
    page.eval_on_selector("#smart-app", "(el, h) => { el.height = String(h); }", content)
    height = int(page.evaluate("document.documentElement.scrollHeight"))
    page.set_viewport_size({"width": 1200, "height": height})
    page.screenshot(path=str(path))
