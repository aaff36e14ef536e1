"""One real browser: headless Chromium (Debian's ``chromium``) driven by Playwright completes an EHR
launch inside a cross-site iframe of the simulated EHR, and the page shows the card's numbers.

The EHR page is served as ``localhost`` and the app as ``127.0.0.1``: two different sites, so the
session cookie must be ``SameSite=None; Secure`` (Chromium treats loopback http as secure) and the
app's ``frame-ancestors`` must name the EHR, exactly as in a real cross-site EHR iframe.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    FrameLocator,
    Page,
    sync_playwright,
)

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
FIGURE = re.compile(r"[<>]?\d+%")


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
    # Let the out-of-process frame paint the newly visible area (it lags the resize by a frame or
    # two; without the wait the lower part of a long page can come out blank).
    frame.evaluate(
        "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"
    )
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))


#: Distinct Chinese characters the page shows; rendered with a real CJK font each has its own
#: glyph, while without one every character is the same "tofu" box.
CJK_PROBE = "面肌痉挛射频消融复发风险"


def _open_risk_page(
    chromium: Browser, shim: EhrShim, served: Any, patient: str, locale: str
) -> tuple[BrowserContext, Page, FrameLocator]:
    """The EHR page with the app launched in its iframe, in a browser whose language is
    ``locale`` (Playwright sends it as ``Accept-Language``)."""
    context = chromium.new_context(viewport={"width": 1200, "height": 900}, locale=locale)
    page = context.new_page()
    page.goto(shim.ehr_page(shim.new_launch(patient), served.url("/smart/launch")))
    app = page.frame_locator("#smart-app")
    app.locator("[data-testid=risk-table]").wait_for(timeout=TIMEOUT_MS)
    return context, page, app


def _figures(app: FrameLocator) -> list[tuple[str, str, str]]:
    """(month, raw risk, displayed risk and range) of each row of the risk table."""
    rows = app.locator("[data-testid=risk-table] tbody tr").all()
    return [
        (
            row.get_attribute("data-month") or "",
            row.get_attribute("data-risk") or "",
            " ".join(FIGURE.findall(row.inner_text())),
        )
        for row in rows
    ]


def test_the_chinese_page_says_the_same_numbers_in_cjk_glyphs(
    chromium: Browser, serve_smart: ServeSmart, shim: EhrShim, seed: Seed
) -> None:
    """A browser set to Chinese gets the page in Simplified Chinese (Accept-Language), with the
    English page's numbers, and the Chinese text is drawn with real glyphs (CJK fonts installed by
    ``scripts/ci-chromium.sh``), not boxes. Screenshots of both go to test-artifacts/i18n/."""
    seed(PATIENT)
    served = serve_smart(SMART_ALLOWED_ISSUERS=shim.fhir_base_localhost, SMART_COOKIE_SECURE=True)
    (ARTIFACTS / "i18n").mkdir(parents=True, exist_ok=True)
    pages: dict[str, list[tuple[str, str, str]]] = {}
    for locale, name in (("en-US", "smart-risk-page-en.png"), ("zh-CN", "smart-risk-page-zh.png")):
        context, page, app = _open_risk_page(chromium, shim, served, PATIENT, locale)
        pages[locale] = _figures(app)
        frame = page.frame(name="smart-app")
        assert frame is not None
        lang = frame.evaluate("document.documentElement.lang")
        title = app.locator("#summary-title").inner_text()
        if locale == "zh-CN":
            assert lang == "zh-Hans" and title == "面肌痉挛复发的估计风险"
            assert (
                "House-Brackmann 面神经功能分级" in app.locator("[data-testid=inputs]").inner_text()
            )
            assert "估计为" in app.locator("[data-testid=tier]").inner_text()
            assert (
                app.locator("[data-testid=limitations] li").first.inner_text().startswith("单中心")
            )
            # Distinct characters must give distinct glyph images (tofu gives one box for all),
            # drawn in the page's own font.
            glyphs = frame.evaluate(
                """([text, font]) => {
                    const canvas = document.createElement("canvas");
                    canvas.width = 40; canvas.height = 40;
                    const ctx = canvas.getContext("2d");
                    ctx.font = font;
                    return [...text].map((ch) => {
                        ctx.clearRect(0, 0, 40, 40);
                        ctx.fillText(ch, 4, 32);
                        const data = ctx.getImageData(0, 0, 40, 40).data;
                        let inked = 0, hash = 0;
                        for (let i = 3; i < data.length; i += 4) {
                            if (data[i] > 0) { inked++; hash = (hash * 31 + i * data[i]) | 0; }
                        }
                        return [inked, hash];
                    });
                }""",
                [
                    CJK_PROBE,
                    "28px " + app.locator("body").evaluate("el => getComputedStyle(el).fontFamily"),
                ],
            )
            assert all(inked > 20 for inked, _ in glyphs), glyphs  # something was drawn
            assert len({h for _, h in glyphs}) == len(set(CJK_PROBE)), glyphs
        else:
            assert lang == "en" and title == "Estimated risk that the spasm recurs"
        _screenshot(page, ARTIFACTS / "i18n" / name)
        context.close()
    assert pages["zh-CN"] == pages["en-US"] and len(pages["en-US"]) == 3


def test_the_launch_locale_chooses_the_apps_language(
    serve_smart: ServeSmart, shim: EhrShim
) -> None:
    """The EHR's launch ``locale`` parameter survives the OAuth round trip in a cookie with the
    session cookie's attributes."""
    served = serve_smart(SMART_ALLOWED_ISSUERS=shim.fhir_base_localhost, SMART_COOKIE_SECURE=True)
    response = requests.get(
        served.url("/smart/launch"),
        params={"iss": shim.fhir_base_localhost, "launch": "x", "locale": "zh-CN"},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302
    cookie = next(c for c in response.cookies if c.name == "__Host-hfs_smart_lang")
    assert cookie.value == "zh_Hans" and cookie.secure
