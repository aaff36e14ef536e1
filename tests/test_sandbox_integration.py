"""The sandbox tools end to end: synthetic patients loaded into a real FHIR server process
(sekmet-fhir), the real service as a subprocess, and ``hfs-cds smoke`` firing every hook for every
patient with prefetch and without it.

The smoke table of the main run is saved to ``test-artifacts/smoke-table.txt``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.model.card import DEFAULT_MODEL_CARD
from cds_service.sandbox.fhir_http import FhirEndpoint
from cds_service.sandbox.loader import LoadReport, load_bundle
from cds_service.sandbox.scenarios import (
    PATIENT_IDENTIFIER_SYSTEM,
    RECORD_IDENTIFIER_SYSTEM,
    SCENARIOS,
    build_bundle,
    synthetic_patients,
)
from tests.cli_runner import run_cli
from tests.fhir_server import FhirServerProcess, running_sekmet
from tests.service_process import running_service

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SMOKE_TABLE = REPO / "test-artifacts" / "smoke-table.txt"
#: A seed no other test loads, so the smoke test sees exactly these patients.
SEED = 4242
HOOKS = ("patient-view", "order-sign", "encounter-discharge", "procedure-note-sign")


@contextmanager
def running_sekmet_with_token(data_dir: Path, token: str) -> Iterator[FhirServerProcess]:
    """sekmet-fhir that requires ``Authorization: Bearer <token>`` (static token auth)."""
    auth = f"server_auth:\n  types: [bearer]\n  tokens: [{json.dumps(token)}]\n"
    with running_sekmet(data_dir, extra_settings=auth) as server:
        yield server


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    """One synthetic patient per scenario, seed ``SEED``."""
    return build_bundle(synthetic_patients(seed=SEED))


@pytest.fixture(scope="module")
def first_load(fhir_server: FhirServerProcess, bundle: dict[str, Any]) -> LoadReport:
    """The synthetic bundle loaded through the loader into the session's sekmet-fhir."""
    return load_bundle(FhirEndpoint(fhir_server.base), bundle)


@pytest.fixture(scope="module")
def service(
    fhir_server: FhirServerProcess, first_load: LoadReport, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The service allowed to query the sekmet server without a token; yields discovery URL."""
    with running_service(
        tmp_path_factory.mktemp("service"),
        CDS_FHIR_ALLOWLIST=fhir_server.base,
        CDS_FHIR_FETCH_WITHOUT_TOKEN="1",
    ) as url:
        yield url


def _identifiers_on_server(base: str, kind: str, system: str) -> list[str]:
    """The identifier values (of seed ``SEED``) of every ``kind`` resource on the server."""
    response = requests.get(
        f"{base}/{kind}", params={"identifier": f"{system}|", "_count": "1000"}, timeout=10
    )
    response.raise_for_status()
    return [
        identifier["value"]
        for entry in response.json().get("entry", [])
        for identifier in entry["resource"].get("identifier", [])
        if identifier["system"] == system and identifier["value"].startswith(f"hfs-synth-{SEED}-")
    ]


def test_loading_twice_into_sekmet_does_not_duplicate(
    fhir_server: FhirServerProcess, bundle: dict[str, Any], first_load: LoadReport
) -> None:
    entries = bundle["entry"]
    assert first_load.ok, first_load.render()
    assert first_load.path == "transaction"
    assert first_load.totals() == (len(entries), 0, 0)

    again = load_bundle(FhirEndpoint(fhir_server.base), bundle)
    assert again.totals() == (0, 0, len(entries))
    assert again.path == "nothing to send"

    for kind in ("Patient", "Condition", "Procedure", "Observation"):
        system = PATIENT_IDENTIFIER_SYSTEM if kind == "Patient" else RECORD_IDENTIFIER_SYSTEM
        sent = [
            e["resource"]["identifier"][0]["value"]
            for e in entries
            if e["resource"]["resourceType"] == kind
        ]
        stored = _identifiers_on_server(fhir_server.base, kind, system)
        assert sorted(stored) == sorted(sent), kind  # each once: nothing duplicated


def test_the_synth_bundle_alone_is_idempotent(fhir_server: FhirServerProcess) -> None:
    """Posted twice as is (``hfs-cds synth | curl``): conditional updates, no duplicates."""
    raw = build_bundle(synthetic_patients(seed=SEED + 1, count=3))
    first, second = fhir_server.transaction(raw), fhir_server.transaction(raw)
    assert {e["response"]["status"] for e in first["entry"]} == {"201 Created"}
    assert {e["response"]["status"] for e in second["entry"]} == {"200 OK"}
    response = requests.get(
        f"{fhir_server.base}/Patient",
        params={"identifier": f"{PATIENT_IDENTIFIER_SYSTEM}|", "_count": "1000"},
        timeout=10,
    )
    keys = [
        i["value"]
        for e in response.json()["entry"]
        for i in e["resource"]["identifier"]
        if i["value"].startswith(f"hfs-synth-{SEED + 1}-")
    ]
    assert sorted(keys) == [f"hfs-synth-{SEED + 1}-{i:03d}" for i in range(3)]


def test_smoke_passes_for_every_patient_hook_and_mode(
    fhir_server: FhirServerProcess,
    service: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The closing check of issue 5: every scenario, every hook, with and without prefetch."""
    code = run_cli(
        "smoke",
        "--fhir",
        fhir_server.base,
        "--service",
        service,
        "--seed",
        str(SEED),
        "--out",
        str(SMOKE_TABLE),
    )
    table = capsys.readouterr().out
    assert code == 0, table
    assert SMOKE_TABLE.read_text() == table
    calls = len(SCENARIOS) * len(HOOKS) * 2
    assert f"Result: {calls} calls, {calls} OK, 0 MISMATCH, 0 ERROR" in table
    rows = [line.split() for line in table.splitlines() if line.startswith(f"hfs-synth-{SEED}-")]
    covered = {(row[1], row[2]) for row in rows}
    assert covered == {(s.name, h) for s, _ in SCENARIOS for h in HOOKS}
    assert all(row[-2:] == ["OK", "OK"] for row in rows)


def test_smoke_flags_a_service_scoring_with_another_model_card(
    fhir_server: FhirServerProcess,
    service: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Smoke assesses with a different card than the service runs: scored rows disagree."""
    from importlib import resources

    card = json.loads(
        (resources.files("cds_service.model") / "model_cards" / DEFAULT_MODEL_CARD).read_text()
    )
    card["covariates"]["hb_grade"]["coefficient"] = -1.5
    path = tmp_path / "other-card.json"
    path.write_text(json.dumps(card))
    monkeypatch.setenv("CDS_MODEL_CARD", str(path))
    code = run_cli(
        "smoke",
        "--fhir",
        fhir_server.base,
        "--service",
        service,
        "--seed",
        str(SEED),
        "--hooks",
        "procedure-note-sign",
        "--modes",
        "prefetch",
        "--jwt-alg",
        "RS384",
    )
    table = capsys.readouterr().out
    assert code == 1
    assert "MISMATCH" in table and "model card differs" in table
    assert "risk at 12 months" in table
    assert {line.split()[2] for line in table.splitlines() if line.startswith("hfs-synth-")} == {
        "procedure-note-sign"
    }


def test_smoke_without_synthetic_patients_says_so(
    fhir_server: FhirServerProcess, service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("smoke", "--fhir", fhir_server.base, "--service", service, "--seed", "999") == 2
    assert "no synthetic patients on" in capsys.readouterr().err


def test_with_a_token_the_service_fetches_with_the_ehrs_authorization(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FHIR server that needs a token: the loader sends it, and smoke hands it to the service
    as fhirAuthorization, which the service uses for its own queries (no unauthenticated fetch)."""
    token = "sandbox-token-7f3a"
    (tmp_path / "fhir").mkdir()
    with running_sekmet_with_token(tmp_path / "fhir", token) as fhir:
        assert run_cli("load", "--fhir", fhir.base, "--patients", "4", "--seed", "5") == 2
        assert "it needs a bearer token (--token)" in capsys.readouterr().err
        assert (
            run_cli("load", "--fhir", fhir.base, "--patients", "4", "--seed", "5", "--token", token)
            == 0
        )
        assert "4 patients via transaction" in capsys.readouterr().out
        with running_service(tmp_path, CDS_FHIR_ALLOWLIST=fhir.base) as service:
            code = run_cli("smoke", "--fhir", fhir.base, "--service", service, "--token", token)
            table = capsys.readouterr().out
            assert code == 0, table
            assert f"Result: {4 * len(HOOKS) * 2} calls, {4 * len(HOOKS) * 2} OK" in table
            assert token not in table
