"""``hfs-cds preview``: the cards a request gets, rendered as a CDS Hooks client would, safely.

The card text is untrusted (a service at ``--service`` may be anyone's): markdown renders, raw
HTML never does, only http(s) URLs become links, and the terminal gets no control characters.
The examples are driven end to end on their day and 400 days later.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from cds_service.examples.build import CARD_PLACEHOLDER
from cds_service.preview.cards import cards_of
from cds_service.preview.html import render_html
from cds_service.preview.send import Answer
from cds_service.preview.text import render_text
from cds_service.security.trusted_issuers import mint_development_token
from tests.fhir_server import free_port

Cli = Callable[..., tuple[int, str, str]]
CHROMIUM = Path("/usr/bin/chromium")
DAY = date(2026, 12, 5)
#: What each prefetch-filled example gets: its service, and the card's assessment status.
EXPECTED = {
    "patient-view.json": ("hfs-rfa-recurrence-patient-view", "INFO", "scored"),
    "order-sign.json": ("hfs-rfa-recurrence-order-sign", "INFO", "scored"),
    "encounter-discharge.json": ("hfs-rfa-recurrence-encounter-discharge", "INFO", "scored"),
    "note-sign.json": ("hfs-rfa-recurrence-note-sign", "INFO", "scored"),
    "patient-view-not-scored.json": ("hfs-rfa-recurrence-patient-view", "WARNING", "not-scored"),
}
HOSTILE: dict[str, Any] = {
    "uuid": "0c9f5a9e-5b1a-4c84-9d0b-0e7c5b0c1e11",
    "summary": "Risk <script>document.title='pwned'</script> \x1b[31mred\x1b[0m",
    "indicator": "critical",
    "detail": (
        "**Bold** and _soft_.\n\n| A | B |\n|---|---|\n| 1 | 2 |\n\n"
        "<img src=x onerror=\"document.title='pwned'\"> [click](javascript:alert(1))"
    ),
    "source": {"label": "Someone's <b>service</b>", "url": "javascript:alert(1)"},
    "suggestions": [
        {"label": "Do <i>it</i>", "uuid": "s1", "isRecommended": True},
        {"label": "Or not", "uuid": "s2"},
    ],
    "selectionBehavior": "at-most-one",
    "links": [
        {
            "label": "Quoted",
            "url": 'https://example.org/?q="><script>x()</script>',
            "type": "absolute",
        },
        {"label": "App", "url": "https://app.example.org/launch", "type": "smart"},
        {"label": "Evil", "url": "javascript:alert(1)", "type": "absolute"},
    ],
    "overrideReasons": [{"code": "x", "system": "https://s", "display": "Not <u>now</u>"}],
}


def answer(*cards: dict[str, Any], status: int = 200) -> Answer:
    return Answer(status, {"cards": list(cards)}, "svc", "patient-view", "in process")


@pytest.fixture
def examples_dir(cli: Cli, tmp_path: Path) -> Path:
    """``hfs-cds examples`` written for :data:`DAY` into a temporary folder."""
    out = tmp_path / "examples"
    code, _, err = cli("examples", "--out", str(out), "--today", DAY.isoformat())
    assert code == 0, err
    return out


# -- rendering ------------------------------------------------------------------------------------


def test_the_html_renders_the_markdown() -> None:
    page = render_html(answer(HOSTILE), cards_of(answer(HOSTILE)))
    assert "<strong>Bold</strong>" in page and "<em>soft</em>" in page
    assert re.search(r"<table>\s*<thead>\s*<tr>\s*<th>A</th>", page)
    assert "<td>2</td>" in page


def test_untrusted_html_in_a_card_is_shown_as_text_never_as_markup() -> None:
    page = render_html(answer(HOSTILE), cards_of(answer(HOSTILE)))
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;document.title=" in page  # the summary, escaped
    assert "&lt;img src=x onerror=" in page  # the detail's raw HTML, as text
    assert "script-src" not in page and "default-src 'none'" in page  # the CSP forbids scripts


def test_links_are_escaped_and_only_http_links_are_links() -> None:
    page = render_html(answer(HOSTILE), cards_of(answer(HOSTILE)))
    assert 'href="https://example.org/?q=&quot;&gt;&lt;script&gt;x()&lt;/script&gt;"' in page
    assert "javascript:" not in page.replace("[click](javascript:alert(1))", "")
    assert 'href="https://app.example.org/launch"' in page and "SMART app" in page
    assert ">Evil</a>" not in page and "Evil" in page
    # The markdown link to javascript: stays text; the source label is not a link either.
    assert "Source: Someone&#x27;s &lt;b&gt;service&lt;/b&gt;</p>" in page


def test_suggestions_are_buttons_with_the_recommended_one_marked() -> None:
    page = render_html(answer(HOSTILE), cards_of(answer(HOSTILE)))
    assert '<button type="button" class="recommended">Do &lt;i&gt;it&lt;/i&gt;' in page
    assert '<button type="button">Or not</button>' in page
    assert "<summary>Dismiss with a reason</summary><ul><li>Not &lt;u&gt;now&lt;/u&gt;" in page


def test_cards_show_most_urgent_first_and_the_terminal_gets_no_control_characters() -> None:
    info = {"uuid": "u2", "summary": "Calm", "indicator": "info", "source": {"label": "s"}}
    cards = cards_of(answer(info, HOSTILE))
    assert [c["indicator"] for c in cards] == ["critical", "info"]
    text = render_text(answer(info, HOSTILE), cards)
    assert "\x1b" not in text and "\ufffd[31mred" in text
    assert "[CRITICAL] Risk <script>" in text
    assert "[Do <i>it</i>]  (recommended)" in text
    assert "    A  B\n    1  2" in text  # the table, aligned


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"cards": []}, 200, 'answered {"cards": []}'),
        ({"resourceType": "Bundle"}, 200, "without a 'cards' array"),
        (
            {
                "resourceType": "OperationOutcome",
                "issue": [{"diagnostics": "context.userId is required"}],
            },
            400,
            "answered HTTP 400 for svc: context.userId is required",
        ),
    ],
)
def test_an_answer_without_cards_is_one_error(body: Any, status: int, message: str) -> None:
    from cds_service.cli_support import CliError

    with pytest.raises(CliError, match=re.escape(message)):
        cards_of(Answer(status, body, "svc", "patient-view", "in process"))


# -- the command ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_example_hook_prints_its_card(cli: Cli, examples_dir: Path, name: str) -> None:
    service, indicator, status = EXPECTED[name]
    code, out, err = cli("preview", str(examples_dir / name), "--at", f"{DAY}T09:00:00Z")
    assert code == 0, err
    hook = json.loads((examples_dir / name).read_text())["hook"]
    assert out.startswith(f"{hook} -> {service} (in process): HTTP 200, 1 card\n")
    assert f"\n[{indicator}] " in out
    assert f"; assessment {status}" in out
    if status == "scored":
        assert re.search(r"\n    Risk +\d+% +\d+% +\d+%\n", out)  # the risk table, as text
        assert "Suggestions (any):" in out and "[Record this assessment in the chart]" in out
    else:
        assert "The recurrence risk could not be calculated." in out


@pytest.mark.parametrize("days_on", [0, 400])
def test_the_examples_get_their_cards_on_their_day_and_a_year_on(
    cli: Cli, tmp_path: Path, days_on: int
) -> None:
    """``examples --today D`` then ``preview --at D`` for every prefetch-filled request: the
    examples work whenever they are written (the committed ones stop after about a year)."""
    day = DAY + timedelta(days=days_on)
    out = tmp_path / "examples"
    assert cli("examples", "--out", str(out), "--today", day.isoformat())[0] == 0
    for name, (service, _, status) in EXPECTED.items():
        page = tmp_path / f"{name}.html"
        code, text, err = cli(
            "preview", str(out / name), "--at", f"{day}T23:59:00Z", "--out", str(page)
        )
        assert code == 0, f"{name}: {err}"
        assert f"-> {service} (in process)" in text and f"; assessment {status}" in text
        html = page.read_text(encoding="utf-8")
        assert html.startswith("<!DOCTYPE html>") and f"assessment {status}" in html
        assert 'src="http' not in html and "<link" not in html  # self-contained


def test_the_html_page_shows_the_risk_table(cli: Cli, examples_dir: Path, tmp_path: Path) -> None:
    page = tmp_path / "card.html"
    code, out, _ = cli("preview", str(examples_dir / "patient-view.json"), "--out", str(page))
    assert code == 0 and out.endswith(f"wrote {page}\n")
    html = page.read_text(encoding="utf-8")
    assert "<th>12 months</th>" in html and "<strong>61%</strong>" in html
    assert '<button type="button">Order follow-up reviews' in html
    assert 'href="http://127.0.0.1:8080/model-card"' in html  # where make run serves it


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("bad.json", "{", "bad.json is not valid JSON"),
        ("list.json", "[]", "list.json must hold a CDS Hooks request"),
        ("feedback.json", None, "feedback.json: this is a CDS Hooks feedback body"),
        ("odd.json", '{"hook": "order-select", "context": {}}', "offers no 'order-select' hook"),
    ],
)
def test_a_file_that_is_no_request_is_one_line(
    cli: Cli, examples_dir: Path, file: str, content: str | None, message: str
) -> None:
    path = examples_dir / file
    if content is not None:
        path.write_text(content)
    code, out, err = cli("preview", str(path))
    assert code == 2 and out == ""
    assert err.startswith("hfs-cds preview: ") and message in err and err.count("\n") == 1


def test_a_refused_request_is_one_line_with_the_services_reason(
    cli: Cli, examples_dir: Path
) -> None:
    """The fetch-mode example still has its placeholders: no FHIR server may be queried (412)."""
    code, out, err = cli("preview", str(examples_dir / "fetch-patient-view.json"))
    assert code == 2 and out == ""
    assert "answered HTTP 412 for hfs-rfa-recurrence-patient-view: " in err
    assert "not on this service's FHIR allowlist" in err and err.count("\n") == 1


def test_in_process_the_service_may_fetch_from_a_loopback_fhir_server(
    cli: Cli, examples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As under make run: an http FHIR server on loopback may be allowlisted (make sandbox's).
    Nothing listens on the port here, so the fetch itself fails: a 412 naming the server."""
    fhir = f"http://127.0.0.1:{free_port()}/fhir"
    monkeypatch.setenv("CDS_FHIR_ALLOWLIST", fhir)
    monkeypatch.setenv("CDS_FHIR_FETCH_WITHOUT_TOKEN", "1")
    request = json.loads((examples_dir / "fetch-patient-view.json").read_text())
    request["fhirServer"] = fhir
    del request["fhirAuthorization"]
    (examples_dir / "fetch.json").write_text(json.dumps(request))
    code, out, err = cli("preview", str(examples_dir / "fetch.json"))
    assert code == 2 and out == ""
    assert "answered HTTP 412" in err and "allowlist" not in err and "must be https" not in err


def test_no_card_is_one_line_saying_why_there_may_be_none(cli: Cli, examples_dir: Path) -> None:
    late = (DAY + timedelta(days=30)).isoformat()
    code, out, err = cli("preview", str(examples_dir / "encounter-discharge.json"), "--at", late)
    assert code == 2 and out == ""
    assert 'answered {"cards": []}' in err and "hfs-cds examples --out DIR" in err


def test_options_that_do_not_go_together_are_refused(cli: Cli, examples_dir: Path) -> None:
    request = str(examples_dir / "patient-view.json")
    code, _, err = cli("preview", request, "--service", "http://127.0.0.1:9", "--at", "2026-12-05")
    assert code == 2 and "--at sets the clock of the in-process service" in err
    code, _, err = cli("preview", request, "--iss", "https://ehr.example")
    assert code == 2 and "--jwt-key and --iss go with --service" in err
    code, _, err = cli("preview", request, "--service", "ftp://x")
    assert code == 2 and "is not an http(s) URL" in err


# -- a running service ----------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """``hfs-cds serve`` in development mode (as ``make run``) on a free port, its database in
    the test's folder; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CDS_DEV_MODE": "1", "CDS_INSTANCE_PATH": str(tmp_path / "instance")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            try:
                requests.get(f"{base}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.integration
def test_against_a_running_service_feedback_on_the_card_silences_patient_view(
    cli: Cli, examples_dir: Path, served: str
) -> None:
    """README.txt's feedback recipe: the card uuid from the service's answer, put into
    feedback.json, is accepted; patient-view is then silent for that patient (suppression)."""
    request = str(examples_dir / "patient-view.json")
    code, out, err = cli("preview", request, "--service", served)
    assert code == 0, err
    assert out.startswith(
        f"patient-view -> hfs-rfa-recurrence-patient-view ({served}/cds-services/"
        "hfs-rfa-recurrence-patient-view): HTTP 200, 1 card"
    )
    match = re.search(r"card uuid ([0-9a-f-]{36});", out)
    assert match
    body = (examples_dir / "feedback.json").read_text().replace(CARD_PLACEHOLDER, match.group(1))
    url = f"{served}/cds-services/hfs-rfa-recurrence-patient-view/feedback"
    response = requests.post(
        url,
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {mint_development_token(url)}",
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 1
    code, _, err = cli("preview", request, "--service", f"{served}/cds-services")
    assert code == 2 and 'answered {"cards": []}' in err and "silenced by feedback" in err
    # Another hook still answers, sent straight to its service URL.
    service = f"{served}/cds-services/hfs-rfa-recurrence-order-sign"
    code, out, err = cli("preview", str(examples_dir / "order-sign.json"), "--service", service)
    assert code == 0 and "; assessment scored" in out, err


@pytest.mark.integration
def test_a_service_that_does_not_trust_the_signer_is_one_line(
    cli: Cli, examples_dir: Path, served: str, tmp_path: Path
) -> None:
    """A key of an issuer the service does not know: discovery answers 401, said in one line."""
    jwk = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1())))
    key = tmp_path / "key.json"
    key.write_text(json.dumps({**jwk, "kid": "k1", "alg": "ES384"}))
    request = str(examples_dir / "patient-view.json")
    code, _, err = cli("preview", request, "--service", served, "--jwt-key", str(key))
    assert code == 2 and "--jwt-key needs --iss" in err
    code, out, err = cli(
        "preview", request, "--service", served, "--jwt-key", str(key), "--iss", "https://x.test"
    )
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "answered 401: the service does not trust the JWT" in err


@pytest.mark.integration
def test_a_browser_runs_no_script_from_a_hostile_card(tmp_path: Path) -> None:
    """Headless Chromium opens the page of a card full of script: the title stays, no dialog."""
    from playwright.sync_api import Dialog, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run scripts/ci-chromium.sh (as root)")
    page_file = tmp_path / "card.html"
    page_file.write_text(render_html(answer(HOSTILE), cards_of(answer(HOSTILE))), encoding="utf-8")
    dialogs: list[str] = []

    def refuse(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.on("dialog", refuse)
            page.goto(page_file.as_uri())
            page.get_by_text("Evil").click()  # not a link: nothing happens
            assert page.title() == "Card preview: patient-view"
            assert page.locator("strong", has_text="Bold").count() == 1
            assert page.locator("script, img").count() == 0
        finally:
            browser.close()
    assert dialogs == []
