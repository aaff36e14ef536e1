"""Reading the app's pages in tests: the error code, the status, the numbers in the risk table."""

from __future__ import annotations

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
        self.elements = parser.elements
        self.text = " ".join(parser.text)

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
