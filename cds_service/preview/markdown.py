"""Card markdown, rendered as an EHR would: CommonMark plus GitHub's tables and strikethrough.

The detail is untrusted text. Raw HTML in it is shown as text, never passed through
(``html=False``), and markdown-it refuses ``javascript:``, ``vbscript:``, ``file:`` and ``data:``
link targets. The plain-text rendering reads the same token stream, so both surfaces agree on what
the markdown says (escapes resolved, emphasis dropped, tables aligned).
"""

from __future__ import annotations

from functools import cache

from markdown_it import MarkdownIt
from markdown_it.token import Token


@cache
def _parser() -> MarkdownIt:
    # "commonmark" is strict CommonMark; GFM adds tables and strikethrough (the card's risk table
    # needs them). No linkify: a bare URL stays text, as in most EHRs.
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def to_html(markdown: str) -> str:
    """Safe HTML for a card's markdown (a fragment)."""
    html: str = _parser().render(markdown)
    return html


def to_text(markdown: str) -> list[str]:
    """Plain lines for a terminal: paragraphs, ``- `` (or ``1.``) list items, aligned tables;
    a blank line between blocks."""
    lines: list[str] = []
    tokens = _parser().parse(markdown)
    depth = 0  # list nesting
    markers: list[str] = []  # the marker of each list item whose first line is still to come
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.type == "table_open":
            end = _closing(tokens, i, "table_close")
            _blank(lines)
            lines += _table(tokens[i:end])
            i = end
        elif token.type in ("bullet_list_open", "ordered_list_open"):
            if depth == 0:
                _blank(lines)
            depth += 1
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            depth -= 1
        elif token.type == "list_item_open":
            markers.append(f"{token.info}{token.markup}" if token.info else "-")
        elif token.type == "inline":
            text = inline_text(token).split("\n")
            indent = "  " * max(depth - 1, 0)
            if markers:
                lines.append(f"{indent}{markers.pop()} {text[0]}")
                lines += [f"{indent}  {line}" for line in text[1:]]
            else:
                if depth == 0:
                    _blank(lines)
                lines += text
        elif token.type in ("fence", "code_block"):
            _blank(lines)
            lines += ["    " + line for line in token.content.rstrip("\n").split("\n")]
        elif token.type == "hr":
            _blank(lines)
            lines.append("-" * 20)
        i += 1
    return lines


def inline_text(token: Token) -> str:
    """An inline token as plain text: emphasis dropped, code spans kept, a link as ``text <url>``,
    a hard break as a new line."""
    parts: list[str] = []
    href: str | None = None
    for child in token.children or []:
        if child.type in ("text", "code_inline", "html_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "link_open":
            value = child.attrGet("href")
            href = str(value) if value is not None else None
        elif child.type == "link_close" and href:
            parts.append(f" <{href}>")
            href = None
        elif child.type == "image":
            parts.append(f"[image: {child.content}]")
    return "".join(parts)


def _closing(tokens: list[Token], start: int, kind: str) -> int:
    return next(j for j in range(start, len(tokens)) if tokens[j].type == kind)


def _table(tokens: list[Token]) -> list[str]:
    rows: list[list[str]] = []
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        elif token.type == "inline" and rows:
            rows[-1].append(inline_text(token).replace("\n", " "))
    columns = max((len(r) for r in rows), default=0)
    rows = [r + [""] * (columns - len(r)) for r in rows]
    widths = [max(len(r[c]) for r in rows) for c in range(columns)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def _blank(lines: list[str]) -> None:
    if lines and lines[-1] != "":
        lines.append("")
