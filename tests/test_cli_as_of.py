"""``hfs-cds score --at DATE`` assesses as of the date: before the ablation it is not applicable,
and a grade recorded after the date does not count (clinical-presentation.md §6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_runner import run_cli

#: Its ablation ends 2026-11-10T10:42+08:00; the HB II grade is effective 2026-11-11T09:00+08:00.
EXAMPLE = str(Path(__file__).parent / "data" / "bundle-42min-hb2.json")


def _score_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code = run_cli("score", EXAMPLE, "--json", *args)
    assert code == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_at_a_date_before_the_ablation_is_not_applicable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: ``--at`` a date before the ablation still scored it, with a later grade."""
    result = _score_json(capsys, "--at", "2026-11-01")
    assert result["status"] == "not-applicable"
    assert result["notApplicableBecause"] == "no ablation on record as of 2026-11-01"
    assert "risks" not in result and "inputs" not in result


def test_at_a_time_before_the_grade_ignores_the_grade(capsys: pytest.CaptureFixture[str]) -> None:
    result = _score_json(capsys, "--at", "2026-11-10T12:00:00+08:00")
    assert result["status"] == "not-scored"
    problems = result["problems"]
    assert isinstance(problems, list)
    assert [p["reason"] for p in problems] == ["no-hb-in-window"]


def test_at_a_date_after_the_grade_scores(capsys: pytest.CaptureFixture[str]) -> None:
    assert _score_json(capsys, "--at", "2026-11-25")["status"] == "scored"
