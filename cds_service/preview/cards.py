"""Reading an answer's cards defensively: what both renderings need, from untrusted JSON.

A field of the wrong type is left out rather than failing the preview (a CDS client shows what it
can); the HTTP answer as a whole must still be a CDS Hooks response (:func:`cards_of`).
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

from cds_service.cli_support import CliError
from cds_service.fhir import outcome_text
from cds_service.hooks.cards import EXTENSION_KEY
from cds_service.preview.send import Answer

#: Most urgent first, as the CDS Hooks sandbox orders cards; an unknown indicator goes last.
INDICATORS: Final = ("critical", "warning", "info")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def cards_of(answer: Answer) -> list[dict[str, Any]]:
    """The cards, most urgent first; a :class:`CliError` for an error, a non-CDS answer or none."""
    where = "the service" if answer.where == "in process" else answer.where
    if answer.status != 200:
        raise CliError(
            f"{where} answered HTTP {answer.status} for {answer.service_id}: "
            f"{outcome_text(answer.body)}"
        )
    cards = answer.body.get("cards") if isinstance(answer.body, dict) else None
    if not isinstance(cards, list):
        raise CliError(f"{where} answered 200 without a 'cards' array: not a CDS Hooks response")
    if not cards:
        raise CliError(
            f'{where} answered {{"cards": []}} for {answer.service_id}: no card for this request '
            "(no ablation within the model's horizon, a workflow hook outside its window after "
            "the ablation, or patient-view silenced by feedback; write fresh examples with "
            "hfs-cds examples --out DIR)"
        )
    shown = [c for c in cards if isinstance(c, dict)]
    return sorted(shown, key=lambda c: _rank(c.get("indicator")))


def _rank(indicator: Any) -> int:
    return INDICATORS.index(indicator) if indicator in INDICATORS else len(INDICATORS)


def text(value: Any) -> str:
    """A string field, or "" when absent or not a string."""
    return value if isinstance(value, str) else ""


def items(value: Any) -> list[dict[str, Any]]:
    """The objects of an array field (anything else is dropped)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def safe_url(value: Any) -> str | None:
    """An http(s) URL a page may link to, or None (``javascript:`` and the like never are)."""
    url = text(value).strip()
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def printable(value: str) -> str:
    """Terminal-safe text: control characters (escape sequences included) become U+FFFD."""
    return _CONTROL.sub("\ufffd", value)


def action_line(action: dict[str, Any]) -> str:
    """``create ServiceRequest: description`` (what a suggestion's button would do)."""
    resource = action.get("resource")
    target = text(resource.get("resourceType")) if isinstance(resource, dict) else ""
    target = target or text(action.get("resourceId"))
    head = " ".join(part for part in (text(action.get("type")), target) if part)
    description = text(action.get("description"))
    return f"{head}: {description}" if head and description else head or description


def assessment_note(card: dict[str, Any]) -> str | None:
    """This service's machine-readable assessment in one line (a developer's aid; EHRs do not
    show extensions): status, tier, reasons. None for a card without it (another service's)."""
    extension = card.get("extension")
    data = extension.get(EXTENSION_KEY) if isinstance(extension, dict) else None
    if not isinstance(data, dict):
        return None
    parts = [f"assessment {text(data.get('status')) or '?'}"]
    if text(data.get("tier")):
        parts.append(f"tier {data['tier']}")
    reasons = sorted({text(p.get("reason")) for p in items(data.get("problems"))} - {""})
    if reasons:
        parts.append("reasons " + ", ".join(reasons))
    return "; ".join(parts)
