"""Synthetic patients with follow-up outcomes drawn from a model card, and the recalibration loop:
synth -> load into a real FHIR server -> hfs-cds fit --fhir -> the service scores with the new card.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from cds_service import create_app
from cds_service.model import RecurrenceModel, load_model_card
from cds_service.sandbox.outcomes import follow_up_entries
from cds_service.sandbox.scenarios import PAST_COHORT, build_bundle, synthetic_patients
from tests.cds_invariants import assert_valid_cds_response
from tests.fhir_server import running_sekmet
from tests.hook_calls import HookCaller, recent_patient

Cli = Callable[..., tuple[int, str, str]]
TODAY = date(2026, 11, 25)


def _types(bundle: dict[str, Any]) -> Counter[str]:
    return Counter(e["resource"]["resourceType"] for e in bundle["entry"])


def test_outcomes_are_transaction_entries_referencing_their_patient() -> None:
    patients = synthetic_patients(5, 40, TODAY, past_cohort=True)
    extras = follow_up_entries(
        load_model_card(), patients, seed=5, as_of=datetime(2026, 11, 25, 12, tzinfo=UTC)
    )
    bundle = build_bundle(patients, extras)
    scorable_past = [p for p in patients if p.scenario == PAST_COHORT]
    assert len(scorable_past) == 40 - 17
    assert _types(bundle)["Encounter"] >= len(scorable_past)
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in ("Encounter", "Condition") and "encounter" in resource:
            assert resource["encounter"]["reference"] in full_urls
        if resource["resourceType"] == "Encounter":
            assert resource["subject"]["reference"] in full_urls and "id" not in resource


def test_synth_cli_adds_outcomes(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "cohort.json"
    code, _, err = cli(
        "synth",
        "--patients",
        "30",
        "--outcomes-from",
        "published",
        "--today",
        "2026-11-25",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert _types(json.loads(out.read_text()))["Encounter"] > 0
    code, _, err = cli("synth", "--outcomes-from", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read model card" in err


@pytest.mark.integration
def test_fit_on_synthetic_outcomes_from_a_real_fhir_server(cli: Cli, tmp_path: Path) -> None:
    """The recalibration loop end to end, on a FHIR server of this test's own."""
    (tmp_path / "fhir").mkdir()
    with running_sekmet(tmp_path / "fhir") as fhir:
        code, out, err = cli(
            "load",
            "--fhir",
            fhir.base,
            "--seed",
            "11",
            "--patients",
            "160",
            "--outcomes-from",
            "published",
        )
        assert code == 0, err
        card_path = tmp_path / "local-card.json"
        code, out, err = cli(
            "fit", "--mode", "baseline", "--fhir", fhir.base, "--out", str(card_path)
        )
        assert code == 0, err
    local = load_model_card(card_path)
    assert local.fit["mode"] == "baseline" and local.version != load_model_card().version
    app = create_app({"TESTING": True, "AUTH_REQUIRED": False, "MODEL_CARD": str(card_path)})
    response = HookCaller(app.test_client()).call("patient-view", recent_patient())
    (card,) = assert_valid_cds_response(response.get_json())
    ext = card["extension"]["org.example.hfs-cds.assessment"]
    assert ext["model"]["version"] == local.version
    expected = RecurrenceModel(local).predict_risk(42, 2, [3, 6, 12])
    assert [r["risk"] for r in ext["risks"]] == [round(float(x), 4) for x in expected]
    app.extensions["hfs_cds"].close()
