"""``hfs-cds score --format fhir``: the RiskAssessment for a scored patient, exit status 1 and the
reason on stderr for anyone else; ``--json`` stays an alias of ``--format json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from cds_service.assessment import Assessor
from cds_service.presentation import present
from cds_service.presentation.risk_assessment import risk_assessment
from tests import fhir_builders as fb
from tests.cli_runner import run_cli
from tests.hook_calls import iso, recent_patient

Cli = Callable[..., tuple[int, str, str]]
#: ``recent_patient`` dates its record relative to now; one fixed "now" keeps CLI and expectation equal.
AT = datetime.now(UTC).replace(microsecond=0)


def _write(tmp_path: Path, resources: list[dict[str, Any]]) -> str:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(fb.bundle(*resources, type="collection")))
    return str(path)


@pytest.mark.parametrize("hb", ["I", "II", "III"])
def test_fhir_prints_the_risk_assessment_of_the_pipeline(
    cli: Cli, tmp_path: Path, assessor: Assessor, hb: str
) -> None:
    resources = recent_patient(hb=hb, days_ago=40)
    code, out, err = cli("score", _write(tmp_path, resources), "--at", iso(AT), "--format", "fhir")
    assert code == 0, err
    printed = json.loads(out)
    RiskAssessment.model_validate(printed)
    expected = risk_assessment(present(assessor.assess(resources, None, as_of=AT)), "p1")
    assert printed == expected
    assert out.startswith('{\n  "resourceType": "RiskAssessment"')  # pretty, not one line


@pytest.mark.parametrize(
    ("resources", "reason"),
    [
        (recent_patient(hb=None), "no House-Brackmann grade recorded after the ablation"),
        (recent_patient(hb="IV"), "House-Brackmann grade is outside the model's range"),
        ([fb.patient(), fb.hfs_condition()], "no ablation on record"),
        (recent_patient(days_ago=400), "beyond the model's 12-month horizon"),
    ],
    ids=["no-grade", "hb-iv", "no-ablation", "past-horizon"],
)
def test_no_risk_assessment_exits_1_with_the_reason_on_stderr(
    cli: Cli, tmp_path: Path, resources: list[dict[str, Any]], reason: str
) -> None:
    code, out, err = cli("score", _write(tmp_path, resources), "--format", "fhir")
    assert code == 1
    assert out == ""
    assert err.startswith("hfs-cds: no RiskAssessment: ") and reason in err


def test_a_not_scored_patient_names_the_fix_on_stderr(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli("score", _write(tmp_path, recent_patient(hb=None)), "--format", "fhir")
    assert code == 1 and "To fix:" in err and "House-Brackmann" in err


def test_json_is_an_alias_of_format_json(cli: Cli, tmp_path: Path) -> None:
    path = _write(tmp_path, recent_patient())
    code_alias, alias, _ = cli("score", path, "--at", iso(AT), "--json")
    code_format, formatted, _ = cli("score", path, "--at", iso(AT), "--format", "json")
    assert code_alias == code_format == 0
    assert json.loads(alias) == json.loads(formatted)
    assert json.loads(alias)["status"] == "scored"


def test_text_stays_the_default(cli: Cli, tmp_path: Path) -> None:
    path = _write(tmp_path, recent_patient())
    code, out, _ = cli("score", path, "--at", iso(AT))
    assert code == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_an_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli("score", "bundle.json", "--format", "xml")
    assert exited.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_help_documents_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli("score", "--help")
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--format {text,json,fhir}" in text
    assert "1 with --format fhir when the patient is not scored or not applicable" in text
