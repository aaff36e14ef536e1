"""UCUM duration Quantities converted to minutes."""

from __future__ import annotations

from .json_access import JsonObject, get_number, get_str, token
from .types import Problem, Provenance, Reason

UCUM = "http://unitsofmeasure.org"
MINUTES_PER_UNIT = {"min": 1.0, "h": 60.0, "s": 1.0 / 60.0}

_ACCEPTED = f"a UCUM ({UCUM}) Quantity in min, h or s"


def quantity_minutes(
    quantity: JsonObject, where: str, provenance: Provenance | None = None
) -> float | Problem:
    """Minutes in a duration Quantity, or the Problem that stops it being read.

    ``where`` names the element for messages, e.g. "Observation/dur1 valueQuantity".
    """
    unit = _unit(quantity)
    if unit is None:
        shown = quantity.get("code", quantity.get("unit"))
        system = quantity.get("system")
        in_system = "" if system is None else f" (system {token(system)})"
        return Problem(
            Reason.DURATION_UNSUPPORTED_UNIT,
            f"{where} has unit {token(shown)}{in_system}; a duration must be {_ACCEPTED}.",
            f"Record the operation duration as {_ACCEPTED}.",
            provenance,
        )
    value = get_number(quantity, "value")
    comparator = quantity.get("comparator")
    if value is None or comparator is not None:
        what = "a comparator" if value is not None else "no numeric value"
        return Problem(
            Reason.DURATION_INVALID,
            f"{where} has {what}; an exact duration is needed.",
            f"Record the operation duration as an exact number in {_ACCEPTED}.",
            provenance,
        )
    return value * MINUTES_PER_UNIT[unit]


def _unit(quantity: JsonObject) -> str | None:
    """``min``, ``h`` or ``s`` if the Quantity is a UCUM duration in one of them, else None."""
    system = quantity.get("system")
    if system is not None and system != UCUM:
        return None
    # The code is authoritative; the human-readable unit is a fallback for EHRs that omit it.
    for key in ("code", "unit"):
        candidate = get_str(quantity, key)
        if candidate in MINUTES_PER_UNIT:
            return candidate
    return None
