"""The model card is data: it loads, it is complete, and a broken card fails with a clear error."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cds_service.model import ModelCardError, RecurrenceModel, load_model_card, parse_model_card
from cds_service.model.card import DEFAULT_MODEL_CARD

CARD_FILE = Path(__file__).parents[1] / "cds_service" / "model" / "model_cards" / DEFAULT_MODEL_CARD


@pytest.fixture
def card_json() -> dict[str, Any]:
    """The packaged model card as parsed JSON, for tests that break one field at a time."""
    data: dict[str, Any] = json.loads(CARD_FILE.read_text())
    return data


def test_packaged_card_holds_every_parameter() -> None:
    card = load_model_card()
    assert card.operation_time.coefficient == -0.619
    assert card.hb_grade.coefficient == -2.589
    assert card.operation_time.cut_minutes == 30
    assert (card.hb_grade.primary_window_hours, card.hb_grade.fallback_window_hours) == (72, 168)
    assert [(k.month, k.survival) for k in card.baseline_knots] == [
        (0, 1.0),
        (3, 0.798),
        (6, 0.636),
        (12, 0.281),
    ]
    assert (card.reference_x1, card.reference_x2) == (0.5, 2.0)
    assert card.horizon_months == 12 and card.report_months == (3, 6, 12)
    assert [t.id for t in card.tiers] == ["high", "intermediate", "low"]
    assert card.citation.pmid == "36375197"
    assert card.assumptions and card.limitations
    assert len(card.sha256) == 64


def test_card_from_a_file_path(tmp_path: Path, card_json: dict[str, Any]) -> None:
    card_json["version"] = "2.0.0-local"
    card_json["baseline"]["knots"][3]["survival"] = 0.5
    path = tmp_path / "local.json"
    path.write_text(json.dumps(card_json))
    card = load_model_card(path)
    assert card.version == "2.0.0-local"
    assert RecurrenceModel(card).baseline_cumulative_hazard(12) == pytest.approx(
        -__import__("math").log(0.5)
    )


def _break(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(data)
    *parents, leaf = path.split(".")
    node: Any = broken
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is ...:
        del node[leaf]
    elif leaf.isdigit():
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return broken


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("id", ..., "model card.id: missing"),
        (
            "covariates.operation_time.coefficient",
            "strong",
            "coefficient: expected a finite number",
        ),
        ("covariates.hb_grade.coding", "categorical", "engine scores"),
        ("baseline.knots.1.survival", 1.2, "survival must be in (0, 1]"),
        ("baseline.knots.2.month", 2, "months must increase"),
        ("baseline.interpolation", "spline", "linear-cumulative-hazard"),
        ("horizon_months", 24, "covered by the baseline knots"),
        ("report_months", [3, 18], "report_months"),
        ("tiers", [], "non-empty array"),
        ("scenarios.x2_codings.0.id", "quadratic", "unsupported value 'quadratic'"),
        ("covariates.hb_grade.model_grades", [3, 1], "model_grades"),
    ],
)
def test_broken_card_names_the_field(
    card_json: dict[str, Any], path: str, value: Any, message: str
) -> None:
    with pytest.raises(ModelCardError, match=None) as info:
        parse_model_card(_break(card_json, path, value))
    assert message in str(info.value)


def test_unreadable_or_invalid_card_files(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match="cannot read model card"):
        load_model_card(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_model_card(bad)


def test_a_misspelt_key_names_the_file_the_key_and_the_likely_typo(
    card_json: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 16: a key typo in a site's card named neither the file nor the key it meant."""
    tier = card_json["tiers"][0]
    tier["min_risk_12"] = tier.pop("min_risk_12m")
    path = tmp_path / "site-card.json"
    path.write_text(json.dumps(card_json))
    with pytest.raises(ModelCardError) as info:
        load_model_card(path)
    assert str(info.value) == (
        f"{path}: model card.tiers[0].min_risk_12m: missing (is 'min_risk_12' a misspelling?)"
    )
