"""Cards rendered as the CDS Hooks sandbox renders them (issue 12, items 2 and 7).

The sandbox (github.com/cds-hooks/sandbox, ``src/components/CardList/card-list.jsx``) renders
``detail`` with ``<ReactMarkdown remarkPlugins={[remarkGfm]} rehypePlugins={[rehypeRaw]}>``:
react-markdown 10.1.0, remark-gfm 4.0.1, rehype-raw 7.0.0 on React 18.3.1. GFM tables render as
tables, and bare ``http(s)://`` and ``www.`` URLs outside code spans become links, so a backslash
escape inside a code system (``hfs-rfa\\|hb-grade-post-rfa``) becomes a broken link. CI cannot
fetch the sandbox, so ``tests/smart/render_card.mjs`` renders cards with the same packages
(pinned in ``tests/smart/package-lock.json``, transitive versions as in the sandbox's lock) inside a
static page with the sandbox's card layout, whose button positions matched the real sandbox build
at 1500x2000 to 0.1 px when checked by hand.

The cards come from the service through the Flask test client: HB II after 42 min (intermediate),
HB III after 20 min (low estimate, high-risk schedule) and a missing HB grade (the not-scored card,
which quotes code systems). Fast tests check the rendered HTML without a browser; the browser test
opens each page in Debian's Chromium at 1500x2000, checks what a clinician sees and saves a
screenshot to ``test-artifacts/cards/`` (git-ignored).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.hook_calls import HookCaller, recent_patient

pytestmark = pytest.mark.integration  # every test renders with Node.js (npm ci on first use)
REPO = Path(__file__).resolve().parents[1]
SMART_DIR = REPO / "tests" / "smart"
RENDERER = SMART_DIR / "render_card.mjs"
ARTIFACTS = REPO / "test-artifacts" / "cards"
CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1500, "height": 2000}  # issue 12: buttons visible without scrolling
#: The sandbox's renderer, exactly as pinned (and as in the sandbox's own package-lock.json).
PINNED = {
    "react-markdown": "10.1.0",
    "remark-gfm": "4.0.1",
    "rehype-raw": "7.0.0",
    "react": "18.3.1",
}
NODE_TIMEOUT_SECONDS = 60.0
NPM_TIMEOUT_SECONDS = 300.0
#: What markdown may produce in a card (raw HTML passes rehype-raw, so anything else came from it).
ALLOWED_TAGS = {
    "p", "strong", "em", "code", "ul", "ol", "li", "a", "br",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
URL = re.compile(r"https?://[^\s`)]+")
PERCENT = re.compile(r"^(<5%|>95%|\d{1,2}%)$")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@dataclass(frozen=True)
class Scenario:
    name: str
    hb: str | None
    minutes: float
    scored: bool


SCENARIOS = [
    Scenario("hb2-42min-intermediate", "II", 42, scored=True),
    Scenario("hb3-20min-low-estimate-high-schedule", "III", 20, scored=True),
    Scenario("missing-hb-not-scored", None, 42, scored=False),
]


# -- rendering ----------------------------------------------------------------------------------


def ensure_renderer() -> str:
    """The node binary; ``npm ci`` in tests/smart if the pinned packages are missing or stale."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("Node.js 20 and npm are needed to render cards (tests/smart/render_card.mjs)")

    def installed() -> dict[str, str]:
        versions = {}
        for name in PINNED:
            manifest = SMART_DIR / "node_modules" / name / "package.json"
            if manifest.exists():
                versions[name] = json.loads(manifest.read_text())["version"]
        return versions

    if installed() != PINNED:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SMART_DIR,
            check=True,
            timeout=NPM_TIMEOUT_SECONDS,
        )
    assert installed() == PINNED
    return node


def render(payload: dict[str, Any], *, detail_only: bool = False) -> str:
    """HTML from ``render_card.mjs``: the whole sandbox-like page, or the detail fragment."""
    args = [ensure_renderer(), str(RENDERER)] + (["--detail"] if detail_only else [])
    done = subprocess.run(
        args,
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self, tag: str | None = None) -> Iterator[Node]:
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter(tag)

    def ancestors(self) -> Iterator[Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _TreeBuilder(HTMLParser):
    VOID = {"br", "hr", "img", "input", "meta", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def href_problem(href: str) -> str | None:
    """Why a link target is broken, or None: absolute http(s) URL with a host, no backslash."""
    parts = urlsplit(href)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"not an absolute http(s) URL: {href!r}"
    if "\\" in unquote(href):
        return f"backslash in the link target: {href!r}"
    return None


def detail_problems(markdown: str, html: str) -> list[str]:
    """What misrenders in a card's detail, as a clinician would see it in the sandbox."""
    root = parse(html)
    problems = []
    text = root.text()
    if "\\" in text:
        at = max(0, text.index("\\") - 40)
        problems.append(f"literal backslash in the rendered text: {text[at : at + 80]!r}")
    for node in root.iter():
        if node.tag != "#root" and node.tag not in ALLOWED_TAGS:
            problems.append(f"unexpected <{node.tag}> (raw HTML in the markdown?)")
    for link in root.iter("a"):
        why = href_problem(link.attrs.get("href", ""))
        if why:
            problems.append(f"broken link {link.text()!r}: {why}")
    codes = [c.text() for c in root.iter("code")]
    for url in URL.findall(markdown):
        url = url.rstrip(".,;:\\")
        if not any(url in code for code in codes):
            problems.append(f"code system {url!r} is not inside <code>")
    return problems


# -- the cards ----------------------------------------------------------------------------------


@pytest.fixture
def app_config() -> dict[str, Any]:
    """The SMART app set up, so cards carry every link they can (the longest card)."""
    return {
        "TESTING": True,
        "AUTH_REQUIRED": False,
        "SMART_CLIENT_ID": "card-rendering-test",
        "SMART_ALLOWED_ISSUERS": "https://ehr.example.org/fhir",
    }


def card_for(hooks: HookCaller, scenario: Scenario) -> dict[str, Any]:
    patient = f"render-{scenario.name}"
    resources = recent_patient(minutes=scenario.minutes, hb=scenario.hb, patient=patient)
    response = hooks.call("patient-view", resources, patient=patient)
    assert response.status_code == 200, response.get_data(as_text=True)
    (card,) = response.get_json()["cards"]
    card_status = card["extension"]["org.example.hfs-cds.assessment"]["status"]
    assert (card_status == "scored") is scenario.scored, card_status
    return card  # type: ignore[no-any-return]


def risk_row(root: Node) -> list[str]:
    (table,) = list(root.iter("table"))
    for row in table.iter("tr"):
        cells = [c.text().strip() for c in row.children if isinstance(c, Node)]
        if cells and cells[0] == "Risk":
            return cells
    raise AssertionError("no 'Risk' row in the table")


# -- fast: the markdown, no browser -------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_detail_renders_as_the_sandbox_renders_it(hooks: HookCaller, scenario: Scenario) -> None:
    card = card_for(hooks, scenario)
    markdown = card["detail"]
    html = render(card, detail_only=True)
    assert detail_problems(markdown, html) == [], markdown
    root = parse(html)
    codes = [c.text() for c in root.iter("code")]
    # Every input's provenance is a code span, not text that a renderer may mangle.
    for reference in re.findall(r"`((?:Procedure|Observation)/[^`]+)`", markdown):
        assert reference in codes
    if scenario.scored:
        (table,) = list(root.iter("table"))
        header = [c.text().strip() for c in table.iter("th")]
        months = card["extension"]["org.example.hfs-cds.assessment"]["risks"]
        assert header == ["By", *(f"{r['month']:g} months" for r in months)]
        risks = risk_row(root)
        assert len(risks) == len(months) + 1
        assert all(PERCENT.match(cell) for cell in risks[1:]), risks
        assert f"{risks[-1]} by 12 months" in card["summary"]  # the table agrees with the summary
        assert all(cell.tag == "td" for row in table.iter("tbody") for cell in row.iter("td"))
    else:
        assert not list(root.iter("table"))
        assert [u for u in URL.findall(markdown)], "the not-scored card quotes code systems"
        assert not list(root.iter("a")), "nothing in the detail may become a link"


def test_the_checks_catch_an_escaped_code_system_outside_a_code_span() -> None:
    """What the sandbox showed before the fix: an escaped ``|`` auto-linked into a broken link."""
    markdown = (
        "- **To fix:** record it with the code "
        "https://hfs-cds.example.org/fhir/CodeSystem/hfs-rfa\\|hb-grade-post-rfa."
    )
    html = render({"detail": markdown}, detail_only=True)
    problems = detail_problems(markdown, html)
    assert any(p.startswith("literal backslash") for p in problems), problems
    assert any("backslash in the link target" in p for p in problems), problems
    assert any("is not inside <code>" in p for p in problems), problems


def test_the_checks_catch_a_table_that_is_not_one() -> None:
    """A table without its delimiter row is a paragraph of pipes, not a table."""
    root = parse(render({"detail": "| By | 12 months |\n| Risk | **61%** |"}, detail_only=True))
    assert not list(root.iter("table"))
    with pytest.raises(ValueError):
        risk_row(root)


# -- in Chromium at 1500x2000 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium (never a downloaded browser); ``scripts/ci-chromium.sh`` installs it."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run scripts/ci-chromium.sh (as root)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.integration
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_card_in_the_sandbox_layout_reads_correctly_and_buttons_are_above_the_fold(
    hooks: HookCaller, chromium: Browser, scenario: Scenario
) -> None:
    card = card_for(hooks, scenario)
    patient = {"id": f"render-{scenario.name}", "name": "Wei Chen", "birthDate": "1968-07-14"}
    html = render({"cards": [card], "patient": patient})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{scenario.name}.html").write_text(html)

    page = chromium.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    try:
        page.set_content(html)
        page.screenshot(path=str(ARTIFACTS / f"{scenario.name}.png"))
        shown = page.locator("[data-role=card]")
        detail = shown.locator("[data-role=detail]")
        text = shown.inner_text()
        assert "\\" not in text, text

        if scenario.scored:
            table = detail.locator("table")
            assert table.count() == 1
            risk = table.locator("tr", has=page.locator("td:text-is('Risk')"))
            assert risk.count() == 1 and risk.is_visible()
            assert PERCENT.match(risk.locator("td").last.inner_text().strip())

        for href in shown.locator("a[href]").evaluate_all("as => as.map(a => a.href)"):
            assert href_problem(href) is None, href_problem(href)
        codes = detail.locator("code").all_inner_texts()
        for url in URL.findall(card["detail"]):
            assert any(url.rstrip(".,;:") in code for code in codes), url
            assert detail.locator("a", has_text=url.rstrip(".,;:")).count() == 0

        buttons = shown.locator("[data-role=suggestion]")
        assert buttons.count() == len(card.get("suggestions", []))
        if scenario.scored:
            assert buttons.count() >= 1
        for i in range(buttons.count()):
            box = buttons.nth(i).bounding_box()
            assert box is not None
            bottom = box["y"] + box["height"]
            label = buttons.nth(i).inner_text()
            assert bottom < VIEWPORT["height"], f"{label!r} ends at y={bottom:.0f} px"
            assert buttons.nth(i).is_visible()
    finally:
        page.close()
