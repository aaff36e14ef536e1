"""Rule 4 (a recurrence already on record rules scoring out) and rule 7 (the diagnosis, context
only)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mappings import PatientInputs, Reason, map_patient
from tests.fhir_builders import (
    ICD10CM,
    PROJECT,
    SNOMED,
    Resource,
    ablation_procedure,
    codeable,
    hb_observation,
    hfs_condition,
    recurrence_condition,
    recurrence_observation,
)


def mapped(*resources: Resource) -> PatientInputs:
    return map_patient([ablation_procedure(), hb_observation(), *resources], "p1")


def reasons(inputs: PatientInputs) -> list[Reason]:
    return [p.reason for p in inputs.exclusions]


def test_recurrence_observation_after_the_ablation_rules_scoring_out() -> None:
    inputs = mapped(recurrence_observation())
    assert reasons(inputs) == [Reason.RECURRENCE_RECORDED]
    problem = inputs.exclusions[0]
    assert problem.message.startswith("Observation/rec1 records a recurrence")
    assert f"{PROJECT}|hfs-recurrence" in problem.message
    assert "dated 2026-08-01T10:00:00+08:00" in problem.message
    assert "Procedure/rfa1" in problem.message
    assert problem.provenance is not None and problem.provenance.id == "rec1"
    assert not inputs.scorable


@pytest.mark.parametrize(
    "extra",
    [
        {"value": None},  # the finding itself, no value
        {"value": "yes"},
        {"status": "amended"},
        {"status": "corrected"},
        {"effective": None, "issued": "2026-08-01T10:00:00Z"},
    ],
)
def test_recurrence_observation_variants_that_count(extra: dict[str, Any]) -> None:
    assert reasons(mapped(recurrence_observation(**extra))) == [Reason.RECURRENCE_RECORDED]


@pytest.mark.parametrize(
    ("extra", "note"),
    [
        ({"value": False}, "answered 'no'"),
        ({"value": "no"}, "answered 'no'"),
        (
            {
                "value": None,
                "valueCodeableConcept": codeable(
                    ("http://terminology.hl7.org/CodeSystem/v2-0136", "N", "No")
                ),
            },
            "answered 'no'",
        ),
        ({"status": "preliminary"}, "status 'preliminary'"),
        ({"status": "entered-in-error"}, "status 'entered-in-error'"),
        ({"effective": "2026-04-01T10:00:00+08:00"}, "dated before Procedure/rfa1 ended"),
        ({"effective": "2026-05-01"}, "dated before"),  # same day: not certainly after
        ({"effective": None, "issued": None}, "without a usable date"),
    ],
)
def test_recurrence_observation_variants_that_do_not(extra: dict[str, Any], note: str) -> None:
    inputs = mapped(recurrence_observation(**extra))
    assert inputs.exclusions == ()
    assert any(n.startswith("Observation/rec1") and note in n for n in inputs.ignored)


def test_recurrence_condition_after_the_ablation() -> None:
    inputs = mapped(recurrence_condition())
    assert reasons(inputs) == [Reason.RECURRENCE_RECORDED]
    assert inputs.exclusions[0].message.startswith("Condition/recc1 records a recurrence")


def test_recurrence_condition_with_only_a_recorded_date_after() -> None:
    inputs = mapped(recurrence_condition(onset="2025-01-01", recorded="2026-07-01"))
    assert reasons(inputs) == [Reason.RECURRENCE_RECORDED]
    assert "dated 2026-07-01" in inputs.exclusions[0].message


@pytest.mark.parametrize("status", ["recurrence", "relapse"])
def test_hfs_condition_with_recurrent_clinical_status_after_the_ablation(status: str) -> None:
    inputs = mapped(hfs_condition(clinical_status=status, onset="2026-07-15"))
    assert reasons(inputs) == [Reason.RECURRENCE_RECORDED]
    assert f"{ICD10CM}|G51.31" in inputs.exclusions[0].message


def test_recurrent_clinical_status_without_a_system_is_understood() -> None:
    condition = hfs_condition(
        recorded="2026-07-15", clinicalStatus={"coding": [{"code": "recurrence"}]}
    )
    assert reasons(mapped(condition)) == [Reason.RECURRENCE_RECORDED]


@pytest.mark.parametrize(
    "condition",
    [
        hfs_condition(),  # active, diagnosed before the ablation
        hfs_condition(clinical_status="active", recorded="2026-07-15"),
        hfs_condition(clinical_status="recurrence", onset="2025-01", recorded="2026-04-20"),
        hfs_condition(
            clinical_status="recurrence",
            recorded="2026-07-15",
            clinicalStatus=codeable(("http://example.org/other", "recurrence", "d")),
        ),
        recurrence_condition(verification_status="refuted"),
        recurrence_condition(verification_status="entered-in-error"),
        hfs_condition(
            clinical_status="relapse", recorded="2026-07-15", verification_status="refuted"
        ),
        recurrence_condition(onset=None, recorded=None),
    ],
)
def test_conditions_that_do_not_record_a_recurrence_after_the_ablation(
    condition: Resource,
) -> None:
    assert mapped(condition).exclusions == ()


def test_refuted_recurrence_is_noted() -> None:
    inputs = mapped(recurrence_condition(verification_status="refuted"))
    assert "Condition/recc1: recurrence with verificationStatus 'refuted'" in inputs.ignored


def test_every_recurrence_is_listed() -> None:
    inputs = mapped(recurrence_observation(), recurrence_condition())
    assert reasons(inputs) == [Reason.RECURRENCE_RECORDED] * 2


def test_diagnosis_is_the_most_recently_recorded_hfs_condition() -> None:
    older = hfs_condition(id="old", recorded="2024-01-10")
    newer = hfs_condition(
        id="new", coding=(SNOMED, "13753008", "Hemifacial spasm"), recorded="2026-04-20"
    )
    for order in ([older, newer], [newer, older]):
        inputs = mapped(*order)
        assert inputs.diagnosis is not None
        assert inputs.diagnosis.provenance.id == "new"
        assert (inputs.diagnosis.code.system, inputs.diagnosis.code.code) == (SNOMED, "13753008")
        assert inputs.diagnosis.code.display == "Hemifacial spasm"
        assert inputs.diagnosis.provenance.recorded == "2026-04-20"


def test_diagnosis_falls_back_to_onset_and_skips_void_conditions() -> None:
    inputs = mapped(
        hfs_condition(id="err", recorded="2026-04-25", verification_status="entered-in-error"),
        hfs_condition(id="ok", recorded=None, onset="2023-03"),
    )
    assert inputs.diagnosis is not None and inputs.diagnosis.provenance.id == "ok"
    assert inputs.diagnosis.provenance.recorded == "2023-03"


def test_diagnosis_is_context_only() -> None:
    without_ablation = map_patient([hfs_condition()], "p1")
    assert without_ablation.diagnosis is not None
    assert [p.reason for p in without_ablation.exclusions] == [Reason.NO_ABLATION]
    assert mapped().diagnosis is None and mapped().scorable
    undated = map_patient([hfs_condition(onset=None, recorded=None)], "p1").diagnosis
    assert undated is not None and undated.provenance.recorded is None
