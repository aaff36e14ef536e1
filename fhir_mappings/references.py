"""Literal FHIR references ("Type/id", versioned, or absolute) reduced to (type, id)."""

from __future__ import annotations

import re

from .json_access import get_str

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


def parse_reference(text: str) -> tuple[str, str] | None:
    """``(type, id)`` of "Type/id", "Type/id/_history/v" or "http(s)://base/Type/id[/_history/v]"."""
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        if not FHIR_ID.fullmatch(parts[-1]):
            return None
        parts = parts[:-2]
    if len(parts) < 2:
        return None
    if len(parts) > 2 and not text.startswith(("http://", "https://")):
        return None  # a relative reference has exactly two segments
    rtype, rid = parts[-2], parts[-1]
    if _TYPE.fullmatch(rtype) and FHIR_ID.fullmatch(rid):
        return rtype, rid
    return None


def referenced(reference: object) -> tuple[str, str] | None:
    """``(type, id)`` named by a Reference element, if it is a literal reference."""
    if not isinstance(reference, dict):
        return None
    text = get_str(reference, "reference")
    if text is None or len(text) > 2048:
        return None
    return parse_reference(text)
