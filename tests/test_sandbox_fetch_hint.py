"""``hfs-cds smoke`` says what to set when every fetch-mode call failed for one service setting.

Issue 16: the first smoke run against ``make run`` ended "68 OK, 68 ERROR" with no word on
``CDS_FHIR_ALLOWLIST`` or the token. The classification reads the service's own 412 answers, so the
end-to-end tests run the real service (a subprocess) against the real FHIR server (sekmet-fhir)
with each setting missing, and once with nothing missing (no hint).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds_service.sandbox.fetch_hint import fetch_hint, refusal_reason
from cds_service.sandbox.fhir_http import FhirEndpoint
from cds_service.sandbox.loader import load_bundle
from cds_service.sandbox.scenarios import build_bundle, synthetic_patients
from tests.cli_runner import run_cli
from tests.fhir_server import FhirServerProcess
from tests.service_process import running_service

#: A seed no other test loads, so smoke sees exactly these patients.
SEED = 4646
BASE = "http://127.0.0.1:8090/fhir"


def _outcome(diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}],
    }


NO_TOKEN = _outcome(
    "prefetch 'procedures' was absent; 'observations' was absent, and the request has no "
    "fhirAuthorization"
)
NOT_LISTED = _outcome(
    "prefetch 'procedures' was absent, and querying fhirServer failed: procedures: fhirServer is "
    "not on this service's FHIR allowlist"
)


# -- the classification --------------------------------------------------------------------------


def test_the_services_two_configuration_refusals_are_recognised() -> None:
    assert refusal_reason(412, NO_TOKEN) == "no-authorization"
    assert refusal_reason(412, NOT_LISTED) == "not-allowlisted"


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (
            412,
            _outcome("prefetch 'procedures' was absent, and querying fhirServer failed: timeout"),
        ),
        (412, _outcome("prefetch 'procedures' was absent, and the request has no fhirServer")),
        (500, NO_TOKEN),  # the words, but not the 412 the service answers them with
        (412, {"cards": []}),
        (412, "no fhirAuthorization"),
        (412, None),
    ],
)
def test_other_failures_are_not_a_configuration_reason(status: int, answer: Any) -> None:
    assert refusal_reason(status, answer) is None


def test_one_hint_only_when_every_fetch_call_failed_for_the_same_reason() -> None:
    assert fetch_hint(["not-allowlisted"] * 3, BASE) is not None
    assert fetch_hint(["no-authorization"] * 3, BASE) is not None
    assert fetch_hint(["not-allowlisted", "not-allowlisted", None], BASE) is None  # one worked
    assert fetch_hint(["not-allowlisted", "no-authorization"], BASE) is None
    assert fetch_hint([], BASE) is None


def test_the_hint_names_the_settings_with_the_servers_base() -> None:
    listed = fetch_hint(["not-allowlisted"], BASE)
    assert listed is not None and listed.startswith("Hint: ")
    assert f"CDS_FHIR_ALLOWLIST={BASE} (for http also CDS_DEV_MODE=1" in listed
    assert "\n" not in listed
    token = fetch_hint(["no-authorization"], "https://fhir.example/r4")
    assert token is not None
    assert "--token" in token and "CDS_FHIR_FETCH_WITHOUT_TOKEN=1" in token
    assert "CDS_FHIR_ALLOWLIST=https://fhir.example/r4." in token
    assert "CDS_DEV_MODE" not in token  # https needs no development mode


# -- end to end: the real service, each setting missing -------------------------------------------


@pytest.fixture(scope="module")
def loaded(fhir_server: FhirServerProcess) -> Iterator[str]:
    """Two synthetic patients of seed ``SEED`` on the session's sekmet-fhir; yields its base."""
    report = load_bundle(FhirEndpoint(fhir_server.base), build_bundle(synthetic_patients(SEED, 2)))
    assert report.ok, report.render()
    yield fhir_server.base


def _smoke(base: str, service: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run_cli("smoke", "--fhir", base, "--service", service, "--seed", str(SEED))
    return code, capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "the service had no token for"),  # `make run` as it is
        ({"CDS_FHIR_FETCH_WITHOUT_TOKEN": "1"}, "is not on the service's FHIR allowlist"),
    ],
)
def test_a_service_missing_a_setting_gets_one_hint_line(
    loaded: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    settings: dict[str, str],
    expected: str,
) -> None:
    with running_service(tmp_path, **settings) as service:
        code, out = _smoke(loaded, service, capsys)
    assert code == 1
    calls = 2 * 4  # patients x hooks, in each mode
    assert f"Result: {2 * calls} calls, {calls} OK, 0 MISMATCH, {calls} ERROR" in out
    hints = [line for line in out.splitlines() if line.startswith("Hint:")]
    assert len(hints) == 1, out
    assert out.rstrip().endswith(hints[0])  # after the table and its summary
    assert expected in hints[0]
    assert f"CDS_FHIR_ALLOWLIST={loaded} (for http also CDS_DEV_MODE=1" in hints[0]


@pytest.mark.integration
def test_a_service_with_both_settings_passes_without_a_hint(
    loaded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Control: following the hint makes the run green, and a green run has nothing to hint."""
    settings = {"CDS_FHIR_ALLOWLIST": loaded, "CDS_FHIR_FETCH_WITHOUT_TOKEN": "1"}
    with running_service(tmp_path, **settings) as service:
        code, out = _smoke(loaded, service, capsys)
    assert code == 0, out
    assert "Hint:" not in out
