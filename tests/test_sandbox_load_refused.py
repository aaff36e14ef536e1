"""``hfs-cds load`` against a real FHIR server (sekmet-fhir) that refuses the data as invalid.

sekmet-fhir supports transactions and validates them: a transaction holding an Observation without
``status`` is answered 400 with an OperationOutcome (code ``structure``) and rolled back. The
loader must stop there with the server's words, not retry the patients as batches and single
writes (issue 16: that left half a patient on the server). The fallbacks for servers that do not
support transactions are in ``test_sandbox_loader``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from cds_service.sandbox.scenarios import (
    PATIENT_IDENTIFIER_SYSTEM,
    build_bundle,
    synthetic_patients,
)
from tests.cli_runner import run_cli
from tests.fhir_server import FhirServerProcess

pytestmark = pytest.mark.integration

#: Seeds no other test loads, so what is on the server under them came from this file (one per
#: test, so that the order the tests run in does not matter).
SEED = 4343
CONTROL_SEED = 4344


def _patients_of_seed(base: str, seed: int) -> list[str]:
    response = requests.get(
        f"{base}/Patient",
        params={"identifier": f"{PATIENT_IDENTIFIER_SYSTEM}|", "_count": "1000"},
        timeout=10,
    )
    response.raise_for_status()
    return [
        i["value"]
        for e in response.json().get("entry", [])
        for i in e["resource"].get("identifier", [])
        if i.get("value", "").startswith(f"hfs-synth-{seed}-")
    ]


def test_a_real_server_refusing_the_data_stops_the_load_with_its_diagnostics(
    fhir_server: FhirServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = build_bundle(synthetic_patients(seed=SEED, count=3))
    observations = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    assert observations, "control: the synthetic patients have an Observation to break"
    del observations[-1]["status"]
    path = tmp_path / "invalid.json"
    path.write_text(json.dumps(bundle))

    code = run_cli("load", "--fhir", fhir_server.base, "--bundle", str(path))
    out = capsys.readouterr().out

    assert code == 1, out
    assert "FAILED: the server refused the data (HTTP 400: " in out
    assert "Observation.status" in out  # the server's own diagnostics
    assert "nothing was written and nothing else was tried" in out
    assert "batch" not in out and "per-resource" not in out
    assert _patients_of_seed(fhir_server.base, SEED) == []  # not one patient, whole or half


def test_the_same_patients_load_once_the_data_is_valid(
    fhir_server: FhirServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """Control: the server takes such patients, so the refusal above was about the one field."""
    code = run_cli(
        "load", "--fhir", fhir_server.base, "--seed", str(CONTROL_SEED), "--patients", "3"
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "via transaction" in out
    assert len(_patients_of_seed(fhir_server.base, CONTROL_SEED)) == 3
