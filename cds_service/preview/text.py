"""The cards as plain text, for a terminal: what a clinician would read, top to bottom."""

from __future__ import annotations

import textwrap
from typing import Any

from cds_service.preview.cards import (
    action_line,
    assessment_note,
    items,
    printable,
    safe_url,
    text,
)
from cds_service.preview.markdown import to_text
from cds_service.preview.send import Answer

_INDENT = "    "
#: Prose lines are wrapped to this width (tables and URLs are never broken).
WIDTH = 100


def render_text(answer: Answer, cards: list[dict[str, Any]]) -> str:
    """A header line, then each card: indicator and summary, detail, source, suggestions (buttons
    as ``[label]``), links, override reasons, and the card uuid (what feedback names)."""
    count = f"{len(cards)} card" + ("" if len(cards) == 1 else "s")
    lines = [
        f"{answer.hook} -> {answer.service_id} ({answer.where}): HTTP {answer.status}, {count}"
    ]
    for card in cards:
        lines += ["", *_card(card)]
    return "\n".join(printable(line) for line in lines)


def _card(card: dict[str, Any]) -> list[str]:
    indicator = text(card.get("indicator")) or "no indicator"
    lines = [f"[{indicator.upper()}] {text(card.get('summary'))}"]
    detail = text(card.get("detail"))
    if detail:
        lines.append("")
        for line in to_text(detail):
            lines += _wrap(line, _INDENT) if line else [""]
    source = card.get("source") if isinstance(card.get("source"), dict) else {}
    if source:
        url = safe_url(source.get("url"))
        lines += [
            "",
            f"{_INDENT}Source: {text(source.get('label'))}" + (f" <{url}>" if url else ""),
        ]
    suggestions = items(card.get("suggestions"))
    if suggestions:
        behaviour = text(card.get("selectionBehavior"))
        lines += ["", f"{_INDENT}Suggestions" + (f" ({behaviour}):" if behaviour else ":")]
        for s in suggestions:
            mark = "  (recommended)" if s.get("isRecommended") is True else ""
            lines.append(f"{_INDENT}  [{text(s.get('label'))}]{mark}")
            for action in items(s.get("actions")):
                lines += _wrap(action_line(action), _INDENT + "      ")
    links = items(card.get("links"))
    if links:
        lines += ["", f"{_INDENT}Links:"]
        for link in links:
            url = safe_url(link.get("url"))
            kind = "SMART app" if link.get("type") == "smart" else "web page"
            target = f" <{url}>" if url else " (not an http(s) link)"
            lines.append(f"{_INDENT}  {text(link.get('label'))}{target} ({kind})")
    reasons = items(card.get("overrideReasons"))
    if reasons:
        shown = "; ".join(text(r.get("display")) or text(r.get("code")) for r in reasons)
        lines += ["", *_wrap(f"Dismiss with a reason: {shown}", _INDENT)]
    footer = [f"card uuid {text(card.get('uuid')) or '(none: no feedback possible)'}"]
    note = assessment_note(card)
    if note:
        footer.append(note)
    lines += ["", f"{_INDENT}({'; '.join(footer)})"]
    return lines


def _wrap(line: str, indent: str) -> list[str]:
    """A prose line wrapped at :data:`WIDTH`; a list item's continuation lines under its text.
    Table rows (two spaces between cells) are left whole."""
    if "  " in line.strip():
        return [indent + line]
    hang = "  " if line.startswith(("- ", "* ")) or line[:3].rstrip(".").isdigit() else ""
    return textwrap.wrap(
        line,
        WIDTH,
        initial_indent=indent,
        subsequent_indent=indent + hang,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [indent]
