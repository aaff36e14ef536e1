"""Defensive readers for parsed FHIR JSON.

EHRs send malformed resources; an element of the wrong JSON type is read as absent, so no rule ever
has to guard against a string where an object belongs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

JsonObject = dict[str, Any]

# Codes, statuses and units are short tokens; anything else might be free text and is never echoed.
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/|+\-]{0,79}")


def get_dict(obj: JsonObject, key: str) -> JsonObject | None:
    value = obj.get(key)
    return value if isinstance(value, dict) else None


def get_str(obj: JsonObject, key: str) -> str | None:
    """A non-empty string, else None."""
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def get_number(obj: JsonObject, key: str) -> float | None:
    """A finite JSON number (booleans are not numbers), else None."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def iter_dicts(obj: JsonObject, key: str) -> Iterator[JsonObject]:
    """The JSON objects in the list at ``key``; other items and non-lists are skipped."""
    value = obj.get(key)
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def coding_pairs(concept: object) -> Iterator[tuple[str, str]]:
    """``(system, code)`` of each well-formed coding of a CodeableConcept, in document order."""
    # Written out rather than built on iter_dicts/get_str: every rule calls this on every
    # resource it reads, so it is the mapping's innermost loop.
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict):
                system, code = coding.get("system"), coding.get("code")
                if isinstance(system, str) and system and isinstance(code, str) and code:
                    yield system, code


def token(value: object) -> str:
    """A code, status or unit quoted for a message, or a neutral phrase if it may be free text."""
    if isinstance(value, str) and _TOKEN.fullmatch(value):
        return f"'{value}'"
    if value is None:
        return "none"
    return "an unrecognised value"
