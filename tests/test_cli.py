"""``hfs-cds score`` runs the same pipeline as the service and fails cleanly on bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from cds_service import create_app
from tests import fhir_builders as fb
from tests.cds_invariants import assert_valid_cds_response

Cli = Callable[..., tuple[int, str, str]]
EXAMPLES = Path(__file__).parent / "data"  # hand-written, pinned at 2026-11-25


def _write(tmp_path: Path, data: object) -> str:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_score_prints_the_risks_for_the_example_bundle(cli: Cli) -> None:
    code, out, err = cli("score", str(EXAMPLES / "bundle-42min-hb2.json"), "--at", "2026-11-25")
    assert code == 0, err
    assert "by  3 months:   15%  (7% to 15%)" in out
    assert "by 12 months:   61%  (35% to 61%)" in out
    assert "Intermediate estimate: Recurrence within a year is common." in out
    assert "Follow-up: Next review 2026-12-10 (1 month); then 3, 6 and 12 months." in out


def test_score_json_equals_the_card_extension(cli: Cli) -> None:
    """One pipeline: the CLI's JSON and the service's card extension agree on the same data."""
    code, out, _ = cli(
        "score", str(EXAMPLES / "bundle-42min-hb2.json"), "--at", "2026-11-25T00:00:00Z", "--json"
    )
    assert code == 0
    from_cli = json.loads(out)
    app = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "CLOCK": lambda: datetime(2026, 11, 25, tzinfo=UTC),
        }
    )
    client: FlaskClient = app.test_client()
    request = json.loads((EXAMPLES / "patient-view-42min-hb2.json").read_text())
    response = client.post("/cds-services/hfs-rfa-recurrence-patient-view", json=request)
    (card,) = assert_valid_cds_response(response.get_json())
    assert card["extension"]["org.example.hfs-cds.assessment"] == from_cli


def test_score_accepts_an_array_of_resources_and_an_explicit_patient(
    cli: Cli, tmp_path: Path
) -> None:
    resources = [*fb.typical_patient(), fb.ablation_procedure(id="other", patient="p2")]
    code, out, _ = cli(
        "score", _write(tmp_path, resources), "--patient", "p1", "--at", "2026-05-20", "--json"
    )
    assert code == 0
    assert json.loads(out)["status"] == "scored"


def test_score_reports_why_not_scored(cli: Cli, tmp_path: Path) -> None:
    bundle = fb.bundle(fb.patient(), fb.ablation_procedure(), type="collection")
    code, out, _ = cli("score", _write(tmp_path, bundle), "--at", "2026-05-20")
    assert code == 0
    assert "Not scored:" in out and "House-Brackmann" in out


def test_score_says_not_applicable_without_ablation(cli: Cli, tmp_path: Path) -> None:
    code, out, _ = cli("score", _write(tmp_path, fb.bundle(fb.patient(), fb.hfs_condition())))
    assert code == 0 and "Not applicable: no ablation on record" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "is not valid JSON"),
        ('{"resourceType": "Patient"}', "must hold a FHIR Bundle"),
        ("[1, 2]", "must hold a FHIR Bundle"),
    ],
)
def test_score_rejects_bad_files_without_a_traceback(
    cli: Cli, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, _, err = cli("score", str(path))
    assert code == 2 and message in err and "Traceback" not in err


def test_score_rejects_a_bad_date_and_a_missing_file(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli("score", str(EXAMPLES / "bundle-42min-hb2.json"), "--at", "yesterday")
    assert code == 2 and "--at 'yesterday'" in err
    code, _, err = cli("score", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err


def test_a_broken_model_card_is_reported_not_raised(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = tmp_path / "card.json"
    card.write_text("{}")
    monkeypatch.setenv("CDS_MODEL_CARD", str(card))
    code, _, err = cli("score", str(EXAMPLES / "bundle-42min-hb2.json"))
    assert code == 2 and "model card.covariates: missing" in err


def test_dev_token_is_accepted_by_a_development_mode_app(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDS_PUBLIC_BASE_URL", "http://127.0.0.1:8080")
    code, out, _ = cli("dev-token")
    assert code == 0
    app = create_app(
        {"TESTING": True, "DEV_MODE": True, "PUBLIC_BASE_URL": "http://127.0.0.1:8080"}
    )
    response = app.test_client().get(
        "/cds-services", headers={"Authorization": f"Bearer {out.strip()}"}
    )
    assert response.status_code == 200
    app.extensions["hfs_cds"].close()
