"""The cards as a self-contained HTML page, laid out as a CDS Hooks client shows them.

No external assets (styles inline, icons are characters), so the file opens anywhere, offline. The
card text is untrusted: every string is escaped, the detail goes through the safe markdown renderer,
only http(s) URLs become links, and a Content-Security-Policy forbids scripts outright, should
anything slip through.
"""

from __future__ import annotations

from html import escape
from typing import Any, Final

from cds_service.preview.cards import action_line, assessment_note, items, safe_url, text
from cds_service.preview.markdown import to_html
from cds_service.preview.send import Answer

#: Indicator -> (label, icon, colour): the CDS Hooks sandbox's colours, icons as characters.
_INDICATOR: Final = {
    "info": ("Info", "\u2139", "#0b6bcb"),
    "warning": ("Warning", "\u26a0", "#b45309"),
    "critical": ("Critical", "\u26d4", "#b91c1c"),
}
_UNKNOWN: Final = ("Unknown indicator", "?", "#6b7280")
_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'"
)
_STYLE: Final = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       background: #f3f4f6; color: #111827; }
header, main { max-width: 58rem; margin: 0 auto; padding: 1rem 1.25rem; }
header h1 { font-size: 1.2rem; margin: 0 0 .25rem; }
header p { margin: .2rem 0; color: #374151; }
.card { background: #fff; border: 1px solid #d1d5db; border-left: 6px solid var(--tone);
        border-radius: 6px; padding: .9rem 1.1rem; margin: 0 0 1rem; }
.indicator { color: var(--tone); font-weight: 600; font-size: .85rem; text-transform: uppercase; }
.icon { font-size: 1.1rem; margin-right: .3rem; }
.summary { font-size: 1.1rem; margin: .2rem 0 .6rem; }
.detail table { border-collapse: collapse; margin: .4rem 0; }
.detail th, .detail td { border: 1px solid #d1d5db; padding: .2rem .6rem; text-align: left; }
.detail code { background: #f3f4f6; padding: 0 .2rem; border-radius: 3px; }
.source, .meta { color: #4b5563; font-size: .85rem; }
.suggestions { margin: .7rem 0; }
.suggestions button { font: inherit; margin: .2rem .4rem .2rem 0; padding: .35rem .8rem;
        border: 1px solid #2563eb; border-radius: 4px; background: #fff; color: #1d4ed8; }
.suggestions button.recommended { background: #1d4ed8; color: #fff; }
.badge { font-size: .75rem; margin-left: .4rem; }
.actions { margin: 0 0 .4rem; padding-left: 1.2rem; color: #4b5563; font-size: .85rem; }
.links { padding-left: 1.2rem; }
.tag { color: #6b7280; font-size: .8rem; }
details { margin: .5rem 0; }
"""


def render_html(answer: Answer, cards: list[dict[str, Any]]) -> str:
    """The page: what was sent where, then each card."""
    count = f"{len(cards)} card" + ("" if len(cards) == 1 else "s")
    where = "in process" if answer.where == "in process" else answer.where
    head = (
        f"<code>{escape(answer.hook)}</code> to <code>{escape(answer.service_id)}</code> "
        f"({escape(where)}): HTTP {answer.status}, {count}"
    )
    body = "\n".join(_card(card) for card in cards)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Card preview: {escape(answer.hook)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>CDS Hooks card preview</h1>
<p>{head}</p>
<p>As a CDS Hooks client shows the cards, most urgent first. The buttons do nothing here.</p>
</header>
<main>
{body}
</main>
</body>
</html>
"""


def _card(card: dict[str, Any]) -> str:
    label, icon, tone = _INDICATOR.get(text(card.get("indicator")), _UNKNOWN)
    parts = [
        f'<article class="card" style="--tone: {tone}">',
        f'<div class="indicator"><span class="icon" aria-hidden="true">{icon}</span>{label}</div>',
        f'<h2 class="summary">{escape(text(card.get("summary")))}</h2>',
    ]
    detail = text(card.get("detail"))
    if detail:
        parts.append(f'<div class="detail">\n{to_html(detail)}</div>')
    parts += _suggestions(card)
    parts += _links(card)
    parts += _override_reasons(card)
    source = card.get("source")
    if isinstance(source, dict):
        parts.append(
            f'<p class="source">Source: {_anchor(source.get("label"), source.get("url"))}</p>'
        )
    meta = [f"card uuid {escape(text(card.get('uuid')) or '(none: no feedback possible)')}"]
    note = assessment_note(card)
    if note:
        meta.append(escape(note))
    parts += [f'<p class="meta">{"; ".join(meta)}</p>', "</article>"]
    return "\n".join(parts)


def _suggestions(card: dict[str, Any]) -> list[str]:
    suggestions = items(card.get("suggestions"))
    if not suggestions:
        return []
    behaviour = text(card.get("selectionBehavior"))
    parts = [f'<div class="suggestions" data-selection="{escape(behaviour)}">']
    for s in suggestions:
        recommended = s.get("isRecommended") is True
        badge = '<span class="badge">(recommended)</span>' if recommended else ""
        css = ' class="recommended"' if recommended else ""
        parts.append(f'<button type="button"{css}>{escape(text(s.get("label")))}{badge}</button>')
        actions = [f"<li>{escape(action_line(a))}</li>" for a in items(s.get("actions"))]
        if actions:
            parts.append(f'<ul class="actions">{"".join(actions)}</ul>')
    parts.append("</div>")
    return parts


def _links(card: dict[str, Any]) -> list[str]:
    links = items(card.get("links"))
    if not links:
        return []
    rows = []
    for link in links:
        tag = (
            "SMART app: the EHR adds iss and launch" if link.get("type") == "smart" else "web page"
        )
        rows.append(
            f'<li>{_anchor(link.get("label"), link.get("url"))} <span class="tag">({tag})</span></li>'
        )
    return [f'<ul class="links">{"".join(rows)}</ul>']


def _override_reasons(card: dict[str, Any]) -> list[str]:
    reasons = items(card.get("overrideReasons"))
    if not reasons:
        return []
    rows = "".join(
        f"<li>{escape(text(r.get('display')) or text(r.get('code')))}</li>" for r in reasons
    )
    return [f"<details><summary>Dismiss with a reason</summary><ul>{rows}</ul></details>"]


def _anchor(label: Any, url: Any) -> str:
    """A link when the URL is http(s); otherwise the label alone, as text."""
    shown = escape(text(label) or text(url))
    href = safe_url(url)
    if href is None:
        return shown
    return f'<a href="{escape(href, quote=True)}" rel="noopener noreferrer">{shown}</a>'
