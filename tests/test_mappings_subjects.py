"""Which patient a resource belongs to; resources of other patients are set aside with a note."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mappings import infer_patient_id, map_patient, resources_from_bundle
from fhir_mappings.subjects import subject_patient_id
from tests.fhir_builders import (
    FREE_TEXT,
    ablation_procedure,
    bundle,
    hb_observation,
    hfs_condition,
    patient,
    typical_patient,
)


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/p1",
        "Patient/p1/_history/7",
        "https://ehr.example.org/fhir/Patient/p1",
        "http://ehr.example.org/fhir/R4/Patient/p1/_history/2",
    ],
)
def test_subject_reference_forms_that_name_the_patient(reference: str) -> None:
    assert subject_patient_id({"subject": {"reference": reference}}) == "p1"
    inputs = map_patient([ablation_procedure(subject={"reference": reference})], "p1")
    assert inputs.ablation is not None


@pytest.mark.parametrize(
    "subject",
    [
        {"reference": "Group/p1"},
        {"reference": "fhir/Patient/p1"},  # relative references have two segments
        {"reference": "Patient/"},
        {"reference": "Patient/p1/_history/"},
        {"reference": "Patient/p 1"},
        {"identifier": {"system": "urn:mrn", "value": "12345"}},
        {"reference": 5},
        "Patient/p1",
        ["Patient/p1"],
    ],
)
def test_subjects_that_do_not_name_a_patient(subject: Any) -> None:
    assert subject_patient_id({"subject": subject}) is None


def test_other_patients_and_unattributed_resources_are_set_aside() -> None:
    inputs = map_patient(
        [
            ablation_procedure(id="theirs", patient="p2"),
            hb_observation(id="hb-theirs", patient="p2"),
            hfs_condition(id="nosubj", subject=None),
            hb_observation(id="grp", subject={"reference": "Group/g1"}),
        ],
        "p1",
    )
    assert inputs.ablation is None
    assert inputs.diagnosis is None
    assert inputs.ignored == (
        "Condition/nosubj: no subject",
        "Observation/grp: subject is not a Patient reference",
        "Observation/hb-theirs: subject is another patient",
        "Procedure/theirs: subject is another patient",
    )
    assert all("p2" not in note for note in inputs.ignored)  # ids of the resource only


def test_another_patients_grade_is_not_used() -> None:
    inputs = map_patient(
        [ablation_procedure(), hb_observation(id="theirs", grade="I", patient="p2")], "p1"
    )
    assert inputs.hb_grade is not None and not inputs.scorable


def test_patient_id_may_be_given_as_a_reference() -> None:
    assert map_patient(typical_patient(), "Patient/p1").scorable


def test_infer_from_the_single_patient_resource() -> None:
    assert infer_patient_id([patient(id="p9"), ablation_procedure(patient="other")]) == "p9"


def test_infer_from_subjects_that_agree() -> None:
    resources = [ablation_procedure(), hb_observation(), patient(id="a"), patient(id="b")]
    assert infer_patient_id(resources) == "p1"
    assert infer_patient_id([ablation_procedure(), hb_observation(patient="p2")]) is None
    assert infer_patient_id([]) is None
    assert infer_patient_id(bundle(*typical_patient())) == "p1"


def test_map_patient_infers_the_patient_when_not_given() -> None:
    inputs = map_patient(typical_patient())
    assert inputs.patient_id == "p1" and inputs.scorable


def test_without_a_determinable_patient_nothing_is_attributed() -> None:
    inputs = map_patient([ablation_procedure(), ablation_procedure(id="x", patient="p2")])
    assert inputs.patient_id is None
    assert inputs.ablation is None
    assert [p.reason for p in inputs.exclusions] == [p.reason for p in map_patient([]).exclusions]
    assert "no patient id was given" in inputs.exclusions[0].message
    assert "Procedure/rfa1: the patient could not be determined" in inputs.ignored


def test_resources_from_bundle() -> None:
    resources = typical_patient()
    assert resources_from_bundle(bundle(*resources)) == resources
    malformed = {
        "resourceType": "Bundle",
        "entry": [None, "x", {"resource": "x"}, {"fullUrl": "urn:1"}, {"resource": resources[0]}],
    }
    assert resources_from_bundle(malformed) == [resources[0]]
    junks: list[Any] = [None, [], "Bundle", {"entry": {"resource": resources[0]}}, {"entry": None}]
    for junk in junks:
        assert resources_from_bundle(junk) == []


def test_map_patient_accepts_bundles_and_nested_bundles() -> None:
    resources = typical_patient()
    assert map_patient(bundle(*resources), "p1").scorable
    prefetch = [patient(), bundle(*resources[1:3]), bundle(bundle(resources[3]))]
    assert map_patient(prefetch, "p1") == map_patient(resources, "p1")


def test_notes_never_carry_names_or_free_text() -> None:
    inputs = map_patient(
        [ablation_procedure(patient="p2"), hb_observation(subject={"display": FREE_TEXT})], "p1"
    )
    text = " ".join(inputs.ignored)
    assert "Chen" not in text and FREE_TEXT not in text
