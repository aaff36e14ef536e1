"""The smoke test's parts: templates, the card comparison, JWT signing and the table.

The whole smoke test against a real FHIR server and a real service process is in
``test_sandbox_integration``.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from cds_service.assessment import Assessment, Assessor
from cds_service.gather.queries import render_template
from cds_service.hooks.cards import EXTENSION_KEY, CardContext, build_cards
from cds_service.sandbox import smoke
from cds_service.sandbox.bundles import stored_resources
from cds_service.sandbox.fhir_http import Interrupted
from cds_service.sandbox.scenarios import build_bundle, synthetic_patients
from cds_service.sandbox.smoke import (
    FoundPatient,
    Row,
    SmokeResult,
    compare,
    hook_context,
    prefetch_resources,
    scenario_problems,
)
from cds_service.security.trusted_issuers import SigningKey
from tests.cli_runner import run_cli
from tests.fhir_server import free_port

TODAY = date(2026, 11, 20)
NOON = datetime(2026, 11, 20, 12, tzinfo=UTC)


def assessed(assessor: Assessor, scenario_index: int) -> Assessment:
    """The local assessment of one synthetic patient, as smoke computes it."""
    patient = synthetic_patients(count=scenario_index + 1, today=TODAY)[scenario_index]
    return assessor.assess(stored_resources(build_bundle([patient])), patient.key, as_of=NOON)


def service_answer(assessment: Assessment) -> dict[str, Any]:
    """What the service answers for this assessment (the same card builder)."""
    patient = assessment.inputs.patient_id or "p"
    return {"cards": build_cards(assessment, CardContext(patient_id=patient))}


def test_templates_fill_context_and_user_tokens_percent_encoded() -> None:
    context = hook_context("patient-view", "p/1 x")
    assert render_template("Procedure?patient={{context.patientId}}", context) == (
        "Procedure?patient=p%2F1%20x"
    )
    assert render_template("Practitioner/{{userPractitionerId}}", context) == (
        "Practitioner/hfs-cds-smoke"
    )
    assert render_template("Encounter/{{context.encounterId}}", context) is None  # skipped


def test_each_hook_gets_its_required_context() -> None:
    assert set(hook_context("patient-view", "p1")) == {"userId", "patientId"}
    assert hook_context("order-sign", "p1")["draftOrders"]["resourceType"] == "Bundle"
    assert hook_context("encounter-discharge", "p1")["encounterId"]


def test_prefetch_resources_flattens_bundles_once_per_resource() -> None:
    procedure = {"resourceType": "Procedure", "id": "a"}
    bundle = {"resourceType": "Bundle", "entry": [{"resource": procedure}]}
    prefetch = {"x": bundle, "y": bundle, "z": None, "o": {"resourceType": "OperationOutcome"}}
    assert prefetch_resources(prefetch) == [procedure]


@pytest.mark.parametrize("index", [0, 6, 11])  # scored, no card, not scored (HB IV)
def test_the_services_own_answer_matches(assessor: Assessor, index: int) -> None:
    assessment = assessed(assessor, index)
    assert compare(assessment, 200, service_answer(assessment)) == []


def test_a_different_tier_risk_or_model_is_a_mismatch(assessor: Assessor) -> None:
    assessment = assessed(assessor, 0)
    answer = service_answer(assessment)
    ext = answer["cards"][0]["extension"][EXTENSION_KEY]

    close = copy.deepcopy(answer)
    close["cards"][0]["extension"][EXTENSION_KEY]["risks"][0]["risk"] += 0.0003
    assert compare(assessment, 200, close) == []  # agrees to three decimals

    far = copy.deepcopy(answer)
    far["cards"][0]["extension"][EXTENSION_KEY]["risks"][2]["risk"] += 0.001
    assert compare(assessment, 200, far) == [
        f"risk at 12 months {ext['risks'][2]['risk'] + 0.001} != expected "
        f"{assessment.risk_at(12).risk:.3f}"
    ]

    other_tier = copy.deepcopy(answer)
    other_tier["cards"][0]["extension"][EXTENSION_KEY]["tier"] = "low"
    assert compare(assessment, 200, other_tier) == [f"tier low != expected {ext['tier']}"]

    other_model = copy.deepcopy(answer)
    other_model["cards"][0]["extension"][EXTENSION_KEY]["model"]["sha256"] = "0" * 64
    (problem,) = compare(assessment, 200, other_model)
    assert problem.startswith("model card differs")


def test_cards_where_none_belong_reasons_and_errors_are_mismatches(assessor: Assessor) -> None:
    scored, no_card, hb_iv = (assessed(assessor, i) for i in (0, 6, 11))
    assert compare(no_card, 200, service_answer(scored)) == ["1 card(s) where no card was expected"]
    assert compare(scored, 200, {"cards": []}) == ["0 cards where one scored card was expected"]
    assert compare(hb_iv, 200, service_answer(scored)) == ["status scored != expected not-scored"]
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": "no fhirServer"}],
    }
    assert compare(scored, 412, outcome) == ["HTTP 412: no fhirServer"]


def test_the_scenario_tag_catches_data_that_aged(assessor: Assessor) -> None:
    scored = assessed(assessor, 0)
    assert scenario_problems("scored", scored) == []
    assert scenario_problems("not-scored:hb-outside-model", assessed(assessor, 11)) == []
    (drift,) = scenario_problems("no-card", scored)
    assert "now assesses as scored, not the scenario's no-card" in drift
    assert "load it again" in drift


def _private_jwk(tmp_path: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key))
    jwk.update(kid="test-1", alg="ES384")
    path = tmp_path / "client.jwk.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return path, key


def test_a_key_signer_signs_fresh_tokens_for_each_audience(tmp_path: Path) -> None:
    path, key = _private_jwk(tmp_path)
    signer = SigningKey.from_file(path, "https://ehr.example", None, "https://ehr.example/jwks")
    first, second = signer.sign("https://cds/a"), signer.sign("https://cds/a")
    header = jwt.get_unverified_header(first)
    assert header == {
        "alg": "ES384",
        "kid": "test-1",
        "typ": "JWT",
        "jku": "https://ehr.example/jwks",
    }
    claims = [
        jwt.decode(t, key.public_key(), algorithms=["ES384"], audience="https://cds/a")
        for t in (first, second)
    ]
    assert claims[0]["iss"] == "https://ehr.example"
    assert claims[0]["jti"] != claims[1]["jti"]
    assert claims[0]["exp"] - claims[0]["iat"] <= 300


def test_bad_key_files_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    public = tmp_path / "public.json"
    public.write_text(json.dumps({"kty": "EC", "crv": "P-384", "kid": "k", "x": "a", "y": "b"}))
    args = ["smoke", "--fhir", "http://127.0.0.1:1/fhir", "--service", "http://127.0.0.1:1"]
    assert run_cli(*args, "--jwt-key", str(public), "--iss", "https://ehr.example") == 2
    assert "must hold exactly one private JWK (found 0)" in capsys.readouterr().err
    assert run_cli(*args, "--jwt-key", str(public)) == 2
    assert "--jwt-key needs --iss" in capsys.readouterr().err
    assert run_cli(*args, "--iss", "https://ehr.example") == 2
    assert "--iss and --jku go with --jwt-key" in capsys.readouterr().err


def test_an_unreachable_service_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    service = f"http://127.0.0.1:{free_port()}"
    code = run_cli("smoke", "--fhir", "http://127.0.0.1:1/fhir", "--service", service)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"hfs-cds smoke: cannot reach the CDS service at {service}/cds-services")
    assert "Traceback" not in err


def test_the_table_shows_each_mode_and_lists_the_problems() -> None:
    patient = FoundPatient("abc", "hfs-synth-1-000", "typical-coded-hb", "scored")
    ok = Row(patient, "patient-view", "info: 61% by 12 months", "15.3 / 28.3 / 60.6 %")
    ok.verdicts = {"prefetch": "OK", "fetch": "OK"}
    bad = Row(patient, "org.example.hfs-cds.procedure-note-sign", "(no card)", "-")
    bad.verdicts = {"prefetch": "OK", "fetch": "ERROR"}
    bad.problems = ["fetch: HTTP 412: no fhirAuthorization"]
    result = SmokeResult(
        "http://fhir", "http://cds/cds-services", ("prefetch", "fetch"), [], [ok, bad]
    )
    text = result.render()
    assert not result.ok
    assert "PATIENT          SCENARIO          HOOK" in text
    assert "procedure-note-sign  (no card)" in text
    assert "- hfs-synth-1-000 (typical-coded-hb) procedure-note-sign: fetch: HTTP 412" in text
    assert text.endswith("Result: 4 calls, 3 OK, 0 MISMATCH, 1 ERROR")


def test_ctrl_c_in_a_smoke_run_keeps_the_rows_so_far(monkeypatch: pytest.MonkeyPatch) -> None:
    patients = [
        FoundPatient("a", "hfs-synth-1-000", "typical-coded-hb", "scored"),
        FoundPatient("b", "hfs-synth-1-001", "typical-text-hb", "scored"),
    ]
    monkeypatch.setattr(smoke, "find_synthetic_patients", lambda endpoint, seed: patients)

    def one(_e: Any, _c: Any, _a: Any, _s: Any, patient: FoundPatient, *rest: Any) -> list[Row]:
        if patient.id == "b":
            raise KeyboardInterrupt
        return [Row(patient, "patient-view", "info", "15 / 28 / 61 %", {"prefetch": "OK"})]

    monkeypatch.setattr(smoke, "_smoke_patient", one)

    class Service:
        discovery_url = "http://cds.example/cds-services"

        def discover(self) -> list[Any]:
            return []

    class Fhir:
        base = "http://fhir.example"

    seen: list[tuple[int, int]] = []
    with pytest.raises(Interrupted) as stopped:
        smoke.run_smoke(
            Fhir(),  # type: ignore[arg-type]
            Service(),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            modes=("prefetch",),
            progress=lambda done, total: seen.append((done, total)),
        )
    table = stopped.value.partial
    assert "hfs-synth-1-000" in table and "hfs-synth-1-001" not in table
    assert table.endswith("Interrupted after 1 of 2 patients") and seen == [(1, 2)]
