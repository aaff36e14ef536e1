"""Reading the app's pages in tests: the error code, the status, the numbers in the risk table."""

from __future__ import annotations

import html as html_lib
import re
from html.parser import HTMLParser


class _Attributes(HTMLParser):
    """Collects the attributes of every element, and the page's visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append({"tag": tag, **{k: v or "" for k, v in attrs}})

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


class Page:
    def __init__(self, html: str) -> None:
        parser = _Attributes()
        parser.feed(html)
        self.html = html
        self.elements = parser.elements
        self.text = " ".join(parser.text)

    def text_of(self, testid: str) -> str:
        """The visible text of the element with ``data-testid`` (not nested in its own tag)."""
        match = re.search(
            rf'<(\w+)[^>]*\bdata-testid="{re.escape(testid)}"[^>]*>(.*?)</\1>', self.html, re.S
        )
        if match is None:
            raise AssertionError(f"no element with data-testid={testid!r}")
        return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", match.group(2))).split())

    def cells(self, css_class: str) -> list[str]:
        """The text of every ``td`` with this class, in order."""
        found = re.findall(rf'<td class="{re.escape(css_class)}">(.*?)</td>', self.html, re.S)
        return [" ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", c)).split()) for c in found]

    def first(self, attribute: str) -> str | None:
        return next((e[attribute] for e in self.elements if attribute in e), None)

    @property
    def error(self) -> str | None:
        """The failure code of an error page (``data-error``), else None."""
        return self.first("data-error")

    @property
    def status(self) -> str | None:
        """``scored``, ``not-scored`` or ``not-applicable`` on a risk page."""
        return self.first("data-status")

    @property
    def risks(self) -> dict[str, float]:
        """Risk table rows: month (as written, ``"3"``) → risk fraction shown in that row."""
        return {
            e["data-month"]: float(e["data-risk"])
            for e in self.elements
            if e["tag"] == "tr" and "data-month" in e
        }

    def has_testid(self, name: str) -> bool:
        return any(e.get("data-testid") == name for e in self.elements)
