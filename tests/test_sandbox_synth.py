"""``hfs-cds synth``: deterministic, realistic FHIR R4 test patients, one per mapping-rule scenario."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_service.assessment import Assessor, Status
from cds_service.sandbox.bundles import iter_references, stored_resources
from cds_service.sandbox.scenarios import (
    EXPECTED_TAG_SYSTEM,
    PATIENT_IDENTIFIER_SYSTEM,
    RECORD_IDENTIFIER_SYSTEM,
    SCENARIO_TAG_SYSTEM,
    SCENARIOS,
    TEST_DATA_LABEL,
    SyntheticPatient,
    build_bundle,
    parse_expected_code,
    synthetic_patients,
)
from fhir_mappings import Reason
from tests.cds_invariants import assert_valid_fhir_r4
from tests.cli_runner import run_cli

TODAY = date(2026, 11, 20)
#: 17 named scenarios plus a few random typical patients.
COUNT = len(SCENARIOS) + 6
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})$")


@pytest.fixture(scope="module")
def patients() -> list[SyntheticPatient]:
    """The synthetic patients of the default seed, relative to a fixed day."""
    return synthetic_patients(count=COUNT, today=TODAY)


@pytest.fixture(scope="module")
def bundle(patients: list[SyntheticPatient]) -> dict[str, Any]:
    return build_bundle(patients)


def _all_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle["entry"]]


def test_same_seed_and_day_give_the_same_bundle_byte_for_byte(bundle: dict[str, Any]) -> None:
    again = build_bundle(synthetic_patients(count=COUNT, today=TODAY))
    assert json.dumps(again) == json.dumps(bundle)


def test_another_seed_gives_other_patients(patients: list[SyntheticPatient]) -> None:
    other = synthetic_patients(seed=7, count=COUNT, today=TODAY)
    assert {p.key for p in other}.isdisjoint({p.key for p in patients})
    assert [p.scenario for p in other] == [p.scenario for p in patients]
    assert [p.index_ablation_end for p in other] != [p.index_ablation_end for p in patients]


def test_a_patient_does_not_depend_on_how_many_are_generated(
    patients: list[SyntheticPatient],
) -> None:
    assert synthetic_patients(count=5, today=TODAY) == patients[:5]


def test_dates_are_relative_to_today(patients: list[SyntheticPatient]) -> None:
    later = synthetic_patients(count=COUNT, today=TODAY + timedelta(days=10))
    for before, after in zip(patients, later, strict=True):
        if before.index_ablation_end is None:
            assert after.index_ablation_end is None
        else:
            assert after.index_ablation_end == before.index_ablation_end + timedelta(days=10)


def test_no_event_lies_in_the_future(bundle: dict[str, Any]) -> None:
    end_of_today = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC) - timedelta(hours=14)
    for resource in _all_resources(bundle):
        for key in ("effectiveDateTime", "issued", "performedDateTime", "onsetDateTime"):
            value = resource.get(key)
            if isinstance(value, str) and "T" in value:
                assert datetime.fromisoformat(value) < end_of_today, (key, value)
        for value in (resource.get("performedPeriod") or {}).values():
            assert datetime.fromisoformat(value) < end_of_today, value


def test_every_resource_and_the_bundle_are_valid_fhir_r4(bundle: dict[str, Any]) -> None:
    assert_valid_fhir_r4(bundle)
    for resource in _all_resources(bundle):
        assert_valid_fhir_r4(resource)


@pytest.mark.parametrize("index", range(COUNT))
def test_every_patient_assesses_as_its_scenario_intends(
    assessor: Assessor, patients: list[SyntheticPatient], index: int
) -> None:
    """The one pipeline, over what a server would store, gives the scenario's expected outcome."""
    patient = patients[index]
    resources = stored_resources(build_bundle([patient]))
    noon = datetime(TODAY.year, TODAY.month, TODAY.day, 12, tzinfo=UTC)
    assessment = assessor.assess(resources, patient.key, as_of=noon)
    want = {"scored": Status.SCORED, "not-scored": Status.NOT_SCORED}.get(
        patient.scenario.expected, Status.NOT_APPLICABLE
    )
    assert assessment.status is want, [p.message for p in assessment.problems]
    assert {p.reason for p in assessment.problems} >= set(patient.scenario.reasons)
    if want is Status.NOT_SCORED:
        assert {p.reason for p in assessment.problems} == set(patient.scenario.reasons)


def test_the_edge_cases_of_the_mapping_rules_each_have_a_scenario() -> None:
    names = {scenario.name for scenario, _ in SCENARIOS}
    assert {
        "no-ablation",
        "procedure-not-completed",
        "missing-times",
        "duration-out-of-range",
        "hb-iv",
        "repeat-ablation",
        "recurrence-recorded",
        "later-mvd",
        "several-hb-candidates",
        "hb-preliminary-only",
        "duration-observation-hours",
    } <= names
    reasons = {reason for scenario, _ in SCENARIOS for reason in scenario.reasons}
    assert reasons == {
        Reason.PROCEDURE_NOT_COMPLETED,
        Reason.PERIOD_WITHOUT_TIMES,
        Reason.DURATION_OUT_OF_RANGE,
        Reason.HB_OUTSIDE_MODEL,
        Reason.REPEAT_PROCEDURE,
        Reason.RECURRENCE_RECORDED,
        Reason.LATER_TREATMENT,
        Reason.HB_PRELIMINARY_ONLY,
        Reason.NO_HB_IN_WINDOW,
    }


def test_codings_values_statuses_and_time_zones_vary(bundle: dict[str, Any]) -> None:
    resources = _all_resources(bundle)
    procedures = [r for r in resources if r["resourceType"] == "Procedure"]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    ablation_systems = {c["system"] for p in procedures for c in p["code"]["coding"]}
    assert len(ablation_systems) >= 3  # ICD-10-PCS, CPT and the project code (MVD is CPT too)
    assert any(len(p["code"]["coding"]) == 2 for p in procedures)
    hb = [o for o in observations if o["code"]["text"] == "House-Brackmann grade"]
    assert any("valueInteger" in o for o in hb) and any("valueCodeableConcept" in o for o in hb)
    assert {"final", "preliminary", "amended"} <= {o["status"] for o in hb}
    assert {c["system"] for o in hb for c in o["code"]["coding"]} == {
        "https://hfs-cds.example.org/fhir/CodeSystem/hfs-rfa",
        "http://snomed.info/sct",
    }
    durations = [o for o in observations if "valueQuantity" in o]
    assert durations and all(o["valueQuantity"]["code"] == "h" for o in durations)
    assert all(o["partOf"][0]["reference"].startswith("urn:uuid:") for o in durations)
    assert {c["system"] for x in conditions for c in x["code"]["coding"]} >= {
        "http://hl7.org/fhir/sid/icd-10-cm",
        "http://snomed.info/sct",
    }
    stamps = [v for p in procedures for v in (p.get("performedPeriod") or {}).values() if "T" in v]
    assert all(_DATETIME.match(v) for v in stamps)
    assert len({v[19:] for v in stamps}) >= 3  # several UTC offsets, "Z" included
    assert any(len(p.get("performedDateTime", "")) == 10 for p in procedures)  # date only


def test_entries_are_conditional_updates_on_unique_identifiers_with_urn_references(
    bundle: dict[str, Any],
) -> None:
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    full_urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    assert all(url.startswith("urn:uuid:") for url in full_urls)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert "id" not in resource  # the server assigns ids
        system = (
            PATIENT_IDENTIFIER_SYSTEM
            if resource["resourceType"] == "Patient"
            else RECORD_IDENTIFIER_SYSTEM
        )
        identifier = resource["identifier"][0]
        assert identifier["system"] == system
        assert entry["request"] == {
            "method": "PUT",
            "url": f"{resource['resourceType']}?identifier="
            + f"{system}|{identifier['value']}".replace(":", "%3A")
            .replace("/", "%2F")
            .replace("|", "%7C"),
        }
        for ref in iter_references(resource):
            assert ref["reference"] in full_urls, ref


def test_patients_carry_their_scenario_and_every_resource_the_test_data_label(
    patients: list[SyntheticPatient], bundle: dict[str, Any]
) -> None:
    for patient in patients:
        tags = {t["system"]: t["code"] for t in patient.patient["meta"]["tag"]}
        assert tags[SCENARIO_TAG_SYSTEM] == patient.scenario.name
        assert parse_expected_code(tags[EXPECTED_TAG_SYSTEM]) == (
            patient.scenario.expected,
            frozenset(r.value for r in patient.scenario.reasons),
        )
    for resource in _all_resources(bundle):
        assert TEST_DATA_LABEL in resource["meta"]["security"]


def test_extra_resources_per_patient_join_the_bundle(patients: list[SyntheticPatient]) -> None:
    """The hook for simulated follow-up: resources made against a patient's reference."""
    first = patients[0]
    encounter = {
        "resourceType": "Encounter",
        "identifier": [first.record_identifier("last-contact")],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": first.reference(),
    }
    bundle = build_bundle(patients[:2], {first.key: [encounter]})
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds.index("Encounter") == len(first.resources)
    assert_valid_fhir_r4(bundle)
    stored = stored_resources(bundle)
    assert stored[len(first.resources)]["subject"] == {"reference": f"Patient/{first.key}"}
    with pytest.raises(ValueError, match="unknown patient"):
        build_bundle(patients[:1], {"nobody": [encounter]})
    with pytest.raises(ValueError, match="no identifier"):
        build_bundle(patients[:1], {first.key: [{"resourceType": "Encounter"}]})


def test_synth_command_writes_the_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synthetic.json"
    assert (
        run_cli(
            "synth", "--seed", "7", "--patients", "3", "--today", "2026-01-15", "--out", str(out)
        )
        == 0
    )
    written = json.loads(out.read_text())
    assert written == build_bundle(synthetic_patients(7, 3, date(2026, 1, 15)))
    assert run_cli("synth", "--seed", "7", "--patients", "3", "--today", "2026-01-15") == 0
    assert json.loads(capsys.readouterr().out) == written


def test_synth_command_refuses_bad_arguments_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli("synth", "--patients", "0") == 2
    assert capsys.readouterr().err.strip() == "hfs-cds synth: --patients must be at least 1"
    with pytest.raises(SystemExit):
        run_cli("synth", "--today", "yesterday")
    assert "is not a date" in capsys.readouterr().err
