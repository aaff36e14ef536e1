"""Input safety (clinical-presentation.md §6): a record the rules read whose elements are not in
FHIR R4 form is an ``unreadable-record`` problem naming the element and the likely version. It is
never skipped in silence, because a recurrence or later treatment that cannot be read would
otherwise leave the patient with a risk card."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_mappings import PatientInputs, Problem, Reason, map_patient, shapes
from tests.fhir_builders import (
    CONDITION_CLINICAL,
    FREE_TEXT,
    Resource,
    ablation_procedure,
    codeable,
    duration_observation,
    hb_observation,
    hfs_condition,
    mvd_procedure,
    recurrence_condition,
    recurrence_observation,
    typical_patient,
)


def mapped(*resources: Resource) -> PatientInputs:
    """A scorable patient (42-minute RFA, HB II at 6 h) plus the resources under test."""
    return map_patient([ablation_procedure(), hb_observation(), *resources], "p1")


def unreadable_problem(inputs: PatientInputs) -> Problem:
    """The one problem, which must be unreadable-record and rule scoring out."""
    assert [p.reason for p in inputs.problems] == [Reason.UNREADABLE_RECORD]
    assert not inputs.scorable
    return inputs.problems[0]


def test_stu3_string_clinical_status_recurrence_blocks_scoring() -> None:
    """The issue's case: STU3 ``clinicalStatus: "recurrence"`` used to be skipped, so the patient
    was scored; now it is a precise data error that blocks scoring."""
    condition = hfs_condition(
        id="c1", clinical_status=None, clinicalStatus="recurrence", onset="2026-07-15"
    )
    problem = unreadable_problem(mapped(condition))
    assert problem.message == (
        "Condition/c1: clinicalStatus is the string 'recurrence'; FHIR R4 needs a CodeableConcept "
        "(this looks like FHIR STU3). A recurrence or later treatment that cannot be read blocks "
        "scoring."
    )
    assert f"CodeableConcept with a coding from {CONDITION_CLINICAL} (code 'recurrence')" in (
        problem.action
    )
    assert problem.provenance is not None and problem.provenance.reference == (
        "Condition/c1/_history/1"
    )


def test_the_same_recurrence_in_r4_form_is_read_as_a_recurrence() -> None:
    """Control: the R4 shape of the same fact is the recurrence rule's business, not this one."""
    inputs = mapped(hfs_condition(id="c1", clinical_status="recurrence", onset="2026-07-15"))
    assert [p.reason for p in inputs.problems] == [Reason.RECURRENCE_RECORDED]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"clinicalStatus": "relapse"},
            "clinicalStatus is the string 'relapse'; FHIR R4 needs a CodeableConcept (this looks "
            "like FHIR DSTU2). A recurrence",
        ),
        (
            {"clinicalStatus": "active"},
            "clinicalStatus is the string 'active'; FHIR R4 needs a CodeableConcept (this looks "
            "like FHIR STU3 or DSTU2). A hemifacial spasm Condition that cannot be read",
        ),
        (
            {"verificationStatus": "confirmed"},
            "verificationStatus is the string 'confirmed'; FHIR R4 needs a CodeableConcept (this "
            "looks like FHIR STU3 or DSTU2)",
        ),
    ],
)
def test_string_condition_statuses_name_the_version(extra: dict[str, Any], expected: str) -> None:
    """Any string clinical or verification status on an HFS Condition blocks: the status decides
    whether the Condition records a recurrence, so an unreadable one cannot be ignored."""
    problem = unreadable_problem(mapped(hfs_condition(**extra)))
    assert problem.message.startswith("Condition/hfs1: ")
    assert expected in problem.message


def test_a_string_status_that_is_not_a_known_code_is_not_echoed() -> None:
    """Messages carry identifiers and field names only, never free text."""
    problem = unreadable_problem(mapped(hfs_condition(clinicalStatus=FREE_TEXT)))
    assert "clinicalStatus is a string;" in problem.message
    assert FREE_TEXT not in problem.message + problem.action


def test_dstu2_condition_naming_the_patient_in_patient_is_read_and_blocks() -> None:
    """DSTU2 Conditions have ``patient``, not ``subject``: it used to be set aside as 'no subject'
    (a DSTU2 recurrence, silently). One naming this patient is now reported."""
    dstu2 = hfs_condition(id="old", clinical_status=None, subject=None)
    dstu2["patient"] = {"reference": "Patient/p1"}
    problem = unreadable_problem(mapped(dstu2))
    assert "Condition/old: the patient is named in 'patient'" in problem.message
    assert "(this looks like FHIR DSTU2)" in problem.message
    other = hfs_condition(id="theirs", clinical_status=None, subject=None)
    other["patient"] = {"reference": "Patient/p2"}
    assert mapped(other).scorable  # another patient's record stays set aside


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            mvd_procedure(notPerformed=True),
            "Procedure/mvd1: notPerformed is present; FHIR R4 has no notPerformed element",
        ),
        (
            mvd_procedure(status="aborted"),
            "Procedure/mvd1: status is 'aborted'; FHIR R4 has no such Procedure status; 'stopped' "
            "means the same (this looks like FHIR STU3 or DSTU2)",
        ),
        (
            mvd_procedure(status="suspended"),
            "status is 'suspended'; FHIR R4 has no such Procedure status; 'on-hold' means the "
            "same (this looks like FHIR STU3)",
        ),
        (
            mvd_procedure(status="done"),
            "Procedure/mvd1: status is not an R4 Procedure status; FHIR R4 needs one of",
        ),
        (
            {**mvd_procedure(start=None, end=None), "performed": "2026-09-10"},
            "Procedure/mvd1: 'performed' has no type suffix",
        ),
        (
            mvd_procedure(start=None, end=None, performedDateTime="10 Sept 2026"),
            "Procedure/mvd1: performedDateTime is not a readable FHIR date or dateTime and no "
            "other date is",
        ),
        (
            mvd_procedure(performedPeriod=None, occurrencePeriod={"start": "2026-09-10"}),
            "occurrencePeriod is present; FHIR R4 records when a procedure was done in "
            "performedPeriod or performedDateTime (occurrence[x] is the R5 name) (this looks "
            "like FHIR R5)",
        ),
    ],
)
def test_later_treatment_that_cannot_be_read_blocks_scoring(
    resource: Resource, expected: str
) -> None:
    """Each of these MVDs used to be counted as done, or set aside with a note (so the patient
    was scored as if no later treatment existed)."""
    problem = unreadable_problem(mapped(resource))
    assert expected in problem.message
    assert problem.message.endswith(
        "A recurrence or later treatment that cannot be read blocks scoring."
    )
    assert "'done'" not in problem.message  # an unknown status is not echoed


def test_stu3_ablation_with_not_performed_is_unreadable_not_missing() -> None:
    """An STU3 ablation is named as unreadable, without a misleading 'no ablation found'."""
    inputs = map_patient([ablation_procedure(notPerformed=False), hb_observation()], "p1")
    problem = unreadable_problem(inputs)
    assert inputs.ablation is None
    assert problem.message.startswith("Procedure/rfa1: notPerformed is present;")
    assert "An ablation that cannot be read blocks scoring." in problem.message


def test_r5_ablation_names_r5() -> None:
    resource = ablation_procedure(
        performedPeriod=None,
        occurrencePeriod={"start": "2026-05-01T09:00:00+08:00", "end": "2026-05-01T09:42:00+08:00"},
    )
    problem = unreadable_problem(map_patient([resource, hb_observation()], "p1"))
    assert "(this looks like FHIR R5)" in problem.message


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            recurrence_observation(valueBoolean="false"),
            "Observation/rec1: valueBoolean is a string; FHIR R4 needs a boolean (true or false)",
        ),
        (
            recurrence_observation(value=None, valueCodeableConcept="no"),
            "Observation/rec1: valueCodeableConcept is a string; FHIR R4 needs a CodeableConcept",
        ),
        (
            recurrence_condition(onset=None, recorded=None, assertedDate="2026-08-03"),
            "Condition/recc1: the date is in assertedDate; FHIR R4 calls it recordedDate "
            "(assertedDate is the STU3 name) (this looks like FHIR STU3)",
        ),
        (
            recurrence_condition(onset="August", recorded=None),
            "Condition/recc1: onsetDateTime is not a readable FHIR date or dateTime and no other "
            "date is",
        ),
        (
            recurrence_observation(status="confirmed"),
            "Observation/rec1: status is not an R4 Observation status",
        ),
    ],
)
def test_recurrence_that_cannot_be_read_blocks_scoring(resource: Resource, expected: str) -> None:
    """Recurrence records in older shapes: each used to be read as 'no recurrence' or set aside."""
    problem = unreadable_problem(mapped(resource))
    assert expected in problem.message
    assert "A recurrence or later treatment that cannot be read blocks scoring." in problem.message


@pytest.mark.parametrize(
    ("resource", "element", "r4"),
    [
        (recurrence_observation(effective=None, issued=None), "effective", "effectiveDateTime"),
        (recurrence_condition(onset=None, recorded=None), "onset", "onsetDateTime"),
        (hb_observation(id="hb0", grade=None), "value", "a value[x] element"),
    ],
)
def test_choice_elements_without_a_type_suffix(resource: Resource, element: str, r4: str) -> None:
    """``onset``/``effective``/``value`` without [x] type are not R4 JSON (DSTU2-era exports)."""
    resource[element] = "2026-08-01" if element != "value" else 2
    problem = unreadable_problem(mapped(resource))
    assert f"'{element}' has no type suffix; FHIR R4 JSON names a choice element by its type, " in (
        problem.message
    )
    assert f"e.g. {r4}" in problem.message


def test_house_brackmann_grade_without_a_readable_date_blocks_scoring() -> None:
    """An HB grade with a date that cannot be read might be the first grade after the ablation;
    skipping it (as before, with a note) could score a later, different grade."""
    grade = hb_observation(id="hb0", grade="III", effective=None, issued=None)
    grade["effectiveDateTime"] = "the morning after"
    problem = unreadable_problem(mapped(grade))
    assert problem.message.startswith(
        "Observation/hb0: effectiveDateTime is not a readable FHIR date or dateTime"
    )
    assert "it may be the first grade after the ablation" in problem.message
    assert "the morning after" not in problem.message


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (42, "valueQuantity is a JSON number; FHIR R4 needs a Quantity (a JSON object)"),
        (
            {"value": "42", "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"},
            "valueQuantity.value is a string, not a JSON number; FHIR R4 needs a Quantity there",
        ),
        (
            {"value": 42, "units": "min"},
            "valueQuantity.units is an element FHIR R4 does not define here",
        ),
    ],
)
def test_duration_quantity_of_the_wrong_shape(quantity: object, expected: str) -> None:
    """``Observation.valueQuantity`` as a number, a string value (fhir.resources alone would take
    "42"), or DSTU1/hand-made 'units': checked with the R4B Quantity plus JSON types."""
    date_only = ablation_procedure(start="2026-05-01", end="2026-05-01")
    duration = duration_observation(valueQuantity=quantity)
    inputs = map_patient([date_only, hb_observation(), duration], "p1")
    # The unreadable duration is not read, so the operation time is also missing.
    assert [p.reason for p in inputs.problems] == [
        Reason.UNREADABLE_RECORD,
        Reason.PERIOD_WITHOUT_TIMES,
    ]
    problem = inputs.problems[0]
    assert problem.message.startswith("Observation/dur1: ")
    assert expected in problem.message
    assert problem.message.endswith("An operation duration that cannot be read blocks scoring.")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            {"coding": [{"system": CONDITION_CLINICAL, "code": 5}]},
            "clinicalStatus.coding[0].code is a JSON number, not a string",
        ),
        ({"coding": {"code": "active"}}, "clinicalStatus.coding is not a list"),
        (
            {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}], "Status": "x"},
            "clinicalStatus.(an unrecognised element) is an element FHIR R4 does not define",
        ),
    ],
)
def test_codeable_concepts_are_checked_with_the_r4b_model(status: object, expected: str) -> None:
    """Nested errors carry the element path (names and indexes only, never values)."""
    problem = unreadable_problem(mapped(hfs_condition(clinicalStatus=status)))
    assert f"Condition/hfs1: {expected}" in problem.message


def test_the_r4b_namespace_is_used_not_the_r5_default() -> None:
    """fhir.resources' default namespace is R5; the checks must use R4B element models."""
    for model in shapes._MODELS.values():
        assert model.__module__.startswith("fhir.resources.R4B."), model.__module__


def test_valid_r4_records_are_untouched() -> None:
    """Everything the builders send (R4, as EHRs do) passes: no false alarms on the usual case."""
    everything = [
        *typical_patient(),
        mvd_procedure(id="old", start="2020-01-01T08:00:00Z", end="2020-01-01T11:00:00Z"),
        duration_observation(),
        recurrence_observation(effective="2026-04-01T10:00:00+08:00"),
        recurrence_condition(
            onset="2026-04-01", recorded="2026-04-02", verification_status="refuted"
        ),
        hfs_condition(id="h2", clinicalStatus=codeable((CONDITION_CLINICAL, "active", "Active"))),
    ]
    inputs = map_patient(everything, "p1")
    assert inputs.scorable, inputs.problems


def test_only_records_a_rule_reads_are_checked() -> None:
    """Resources with no code any rule looks for are not validated (the prefetch is not)."""
    unrelated = hfs_condition(id="x", clinicalStatus="active")
    unrelated["code"] = codeable(("http://snomed.info/sct", "38341003", "Hypertension"))
    assert mapped(unrelated).scorable


def test_unreadable_records_do_not_depend_on_order_and_are_all_listed() -> None:
    resources = [
        ablation_procedure(),
        hb_observation(),
        mvd_procedure(notPerformed=True),
        hfs_condition(clinicalStatus="recurrence"),
    ]
    expected = map_patient(resources, "p1")
    assert [p.reason for p in expected.problems] == [Reason.UNREADABLE_RECORD] * 2
    rng = random.Random(3)
    for _ in range(10):
        rng.shuffle(resources)
        assert map_patient(resources, "p1") == expected


def test_records_dated_after_as_of_are_set_aside_before_their_shape_is_read() -> None:
    """A later record was not on record as of the date, whatever its shape."""
    later = mvd_procedure(notPerformed=True)  # ends 2026-09-10
    inputs = map_patient(
        [ablation_procedure(), hb_observation(), later],
        "p1",
        as_of=datetime(2026, 6, 1, tzinfo=UTC),
    )
    assert inputs.scorable
