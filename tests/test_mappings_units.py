"""UCUM duration Quantities: min, h and s convert to minutes; anything else is a precise Problem."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mappings import Problem, Reason
from fhir_mappings.units import UCUM, quantity_minutes


@pytest.mark.parametrize(
    ("quantity", "minutes"),
    [
        ({"value": 42, "unit": "min", "system": UCUM, "code": "min"}, 42.0),
        ({"value": 1.5, "unit": "h", "system": UCUM, "code": "h"}, 90.0),
        ({"value": 2520, "unit": "s", "system": UCUM, "code": "s"}, 42.0),
        ({"value": 42, "code": "min"}, 42.0),  # system missing, code exact
        ({"value": 42, "unit": "min"}, 42.0),  # system and code missing, unit exact
        ({"value": 42, "unit": "minutes", "system": UCUM, "code": "min"}, 42.0),
        ({"value": 42, "unit": "min", "system": None, "code": "min"}, 42.0),
    ],
)
def test_accepted_units_convert_to_minutes(quantity: dict[str, Any], minutes: float) -> None:
    assert quantity_minutes(quantity, "Observation/d valueQuantity") == pytest.approx(minutes)


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": 1, "unit": "d", "system": UCUM, "code": "d"},
        {"value": 42, "unit": "min", "system": "http://example.org/units", "code": "min"},
        {"value": 42, "unit": "minutes"},
        {"value": 42, "code": "MIN"},
        {"value": 42},
        {"value": 42, "code": ["min"]},
    ],
)
def test_other_units_are_unsupported(quantity: dict[str, Any]) -> None:
    problem = quantity_minutes(quantity, "Observation/d valueQuantity")
    assert isinstance(problem, Problem)
    assert problem.reason is Reason.DURATION_UNSUPPORTED_UNIT
    assert problem.message.startswith("Observation/d valueQuantity has unit")
    assert "min, h or s" in problem.message and UCUM in problem.message
    assert "UCUM" in problem.action


def test_bad_unit_message_quotes_the_unit_but_never_free_text() -> None:
    problem = quantity_minutes({"value": 1, "code": "d"}, "X")
    assert isinstance(problem, Problem) and "'d'" in problem.message
    problem = quantity_minutes({"value": 1, "unit": "about an hour, patient anxious"}, "X")
    assert isinstance(problem, Problem) and "anxious" not in problem.message


@pytest.mark.parametrize(
    "quantity",
    [
        {"unit": "min", "system": UCUM, "code": "min"},
        {"value": "42", "unit": "min", "system": UCUM, "code": "min"},
        {"value": True, "unit": "min", "system": UCUM, "code": "min"},
        {"value": float("nan"), "code": "min"},
        {"value": 42, "comparator": ">", "code": "min"},
    ],
)
def test_missing_or_inexact_values_are_invalid(quantity: dict[str, Any]) -> None:
    problem = quantity_minutes(quantity, "Observation/d valueQuantity")
    assert isinstance(problem, Problem)
    assert problem.reason is Reason.DURATION_INVALID
