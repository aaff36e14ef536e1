"""map_patient end to end: fhir.resources models as input, determinism, no free text in any
message, duplicate versions, and a sense of speed."""

from __future__ import annotations

import gc
import itertools
import random
from dataclasses import astuple
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure

from fhir_mappings import (
    HouseBrackmannGrade,
    OperationTime,
    PatientInputs,
    Problem,
    Reason,
    map_patient,
)
from tests.fhir_builders import (
    FREE_TEXT,
    Resource,
    ablation_procedure,
    bundle,
    duration_observation,
    hb_observation,
    hfs_condition,
    mvd_procedure,
    patient,
    recurrence_condition,
    recurrence_observation,
    typical_patient,
)


def busy_record() -> list[Resource]:
    """A patient with most of what can go wrong, plus another patient's resources."""
    return [
        patient(),
        hfs_condition(),
        hfs_condition(id="hfs-old", recorded="2023-05-02"),
        ablation_procedure(
            id="rfa0", start="2025-10-01T09:00:00+08:00", end="2025-10-01T09:30:00+08:00"
        ),
        ablation_procedure(start="2026-05-01", end="2026-05-01"),
        ablation_procedure(id="void", status="entered-in-error"),
        duration_observation(value=0.7, unit="h"),
        duration_observation(id="dur-other", procedure="rfa0"),
        hb_observation(id="hb-pre", grade="I", effective="2026-04-30T10:00:00+08:00"),
        hb_observation(id="hb-prelim", status="preliminary"),
        hb_observation(id="hb-day2", grade=2, effective="2026-05-02T10:00:00+08:00"),
        hb_observation(id="hb-day1", grade="III", effective="2026-05-01T18:00:00+08:00"),
        recurrence_observation(value=False),
        recurrence_condition(),
        mvd_procedure(),
        ablation_procedure(id="p2-rfa", patient="p2"),
        hb_observation(id="p2-hb", patient="p2"),
    ]


def test_busy_record_maps_every_rule_at_once() -> None:
    inputs = map_patient(busy_record(), "p1")
    assert inputs.ablation is not None and inputs.ablation.provenance.id == "rfa1"
    assert isinstance(inputs.operation_time, OperationTime)
    assert inputs.operation_time.minutes == pytest.approx(42)
    assert isinstance(inputs.hb_grade, HouseBrackmannGrade)
    assert (inputs.hb_grade.grade, inputs.hb_grade.provenance.id) == (3, "hb-day1")
    assert [p.reason for p in inputs.exclusions] == [
        Reason.REPEAT_PROCEDURE,
        Reason.RECURRENCE_RECORDED,
        Reason.LATER_TREATMENT,
    ]
    assert not inputs.scorable
    assert inputs.problems == inputs.exclusions


def test_fhir_resources_r4b_models_are_accepted() -> None:
    dicts = typical_patient() + [mvd_procedure()]
    models = [
        Patient.model_validate(dicts[0]),
        Condition.model_validate(dicts[1]),
        Procedure.model_validate(dicts[2]),
        Observation.model_validate(dicts[3]),
        Procedure.model_validate(dicts[4]),
    ]
    from_models = map_patient(models, "p1")
    assert from_models == map_patient(dicts, "p1")
    assert from_models.ablation is not None and from_models.ablation.provenance.version == "1"
    assert [p.reason for p in from_models.exclusions] == [Reason.LATER_TREATMENT]


def test_r4b_bundle_model_and_mixed_input() -> None:
    dicts = typical_patient()
    model = Bundle.model_validate(bundle(*dicts))
    assert map_patient(model, "p1") == map_patient(dicts, "p1")
    mixed: list[Any] = [
        Procedure.model_validate(dicts[2]),
        dicts[3],
        Bundle.model_validate(bundle(dicts[1])),
    ]
    assert map_patient(mixed, "p1").scorable


def test_mapping_leaves_no_reference_cycle_holding_the_resources() -> None:
    """A recursive closure in the Bundle walk once formed a cycle that kept the list of collected
    resources, so the whole prefetch, alive until the collector ran, and a loaded worker paid for
    those collections (issue 12). Only garbage holding these resources counts: other threads of
    the test process may leave garbage of their own meanwhile."""
    busy, typical = busy_record(), typical_patient()
    ours = {id(r) for r in (*busy, *typical)}
    resources = [bundle(*busy), bundle(bundle(*typical))]  # a nested Bundle too
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept in gc.garbage to look at
    try:
        map_patient(resources, "p1")
        gc.collect()
        holding = [
            type(o).__name__
            for o in gc.garbage
            if isinstance(o, list | tuple | dict) and any(id(v) in ours for v in _values(o))
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert holding == []


def _values(container: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> list[Any]:
    return list(container.values()) if isinstance(container, dict) else list(container)


def test_fractional_seconds_from_models_still_parse() -> None:
    proc = ablation_procedure(
        start="2026-05-01T09:00:00.5+08:00", end="2026-05-01T09:42:00.5+08:00"
    )
    inputs = map_patient([Procedure.model_validate(proc)], "p1")
    assert isinstance(inputs.operation_time, OperationTime)
    assert inputs.operation_time.minutes == pytest.approx(42)


def test_an_object_that_cannot_be_dumped_is_set_aside() -> None:
    class Broken:
        def model_dump(self, **kwargs: object) -> dict[str, object]:
            raise RuntimeError("boom")

    inputs = map_patient([Broken(), *typical_patient()], "p1")
    assert inputs.scorable
    assert "1 model object(s) set aside: could not be converted" in inputs.ignored


def test_non_resources_are_counted_not_listed() -> None:
    junk: list[Any] = [None, 3, "Procedure", [], {"id": "x"}]
    inputs = map_patient([*junk, *typical_patient()], "p1")
    assert inputs.scorable
    assert "4 item(s) set aside: not a FHIR resource (JSON object)" in inputs.ignored
    assert "1 JSON object(s) set aside: no valid resourceType" in inputs.ignored
    assert map_patient(None).ablation is None  # type: ignore[arg-type]
    assert map_patient("not a list").ablation is None  # type: ignore[arg-type]


def test_result_does_not_depend_on_resource_order() -> None:
    resources = busy_record()
    expected = map_patient(resources, "p1")
    rng = random.Random(7)
    for _ in range(30):
        shuffled = resources[:]
        rng.shuffle(shuffled)
        assert map_patient(shuffled, "p1") == expected


def test_same_id_twice_uses_the_latest_version_whatever_the_order() -> None:
    old = hb_observation(grade="I")
    old["meta"]["versionId"] = "1"
    new = hb_observation(grade="II", status="amended")
    new["meta"]["versionId"] = "2"
    for order in itertools.permutations([old, new, ablation_procedure()]):
        inputs = map_patient(list(order), "p1")
        assert isinstance(inputs.hb_grade, HouseBrackmannGrade)
        assert (inputs.hb_grade.grade, inputs.hb_grade.provenance.version) == (2, "2")
        assert (
            "Observation/hb1: version 1 set aside; a later or other copy was used" in inputs.ignored
        )
    same = map_patient([ablation_procedure(), ablation_procedure(), hb_observation()], "p1")
    assert same.ignored == () and same.exclusions == ()


def test_resources_without_id_are_kept_and_ordered_by_content() -> None:
    a = hb_observation(id=None, grade="I", effective="2026-05-01T12:00:00+08:00")  # type: ignore[arg-type]
    b = hb_observation(id=None, grade="III", effective="2026-05-01T12:00:00+08:00")  # type: ignore[arg-type]
    first = map_patient([ablation_procedure(), a, b], "p1")
    assert first == map_patient([b, ablation_procedure(), a], "p1")
    assert isinstance(first.hb_grade, HouseBrackmannGrade)
    assert first.hb_grade.provenance.id is None
    assert first.hb_grade.provenance.reference == "Observation (no id)"


def test_invalid_ids_are_not_echoed() -> None:
    inputs = map_patient([ablation_procedure(id="Mrs Chen's RFA", patient="p2")], "p1")
    assert inputs.ignored == ("Procedure (no id): subject is another patient",)


def _all_text(inputs: PatientInputs) -> str:
    problems: list[Problem] = list(inputs.problems)
    parts = [p.message + " " + p.action for p in problems] + list(inputs.ignored)
    return " ".join(parts)


@pytest.mark.parametrize(
    "resources",
    [
        busy_record(),
        [ablation_procedure(status="in-progress")],
        [ablation_procedure(start=None, end=None)],
        [ablation_procedure(), hb_observation(grade=None, valueString=FREE_TEXT)],
        [ablation_procedure(), hb_observation(grade="V")],
        [ablation_procedure(), hb_observation(status="preliminary")],
        [ablation_procedure(start="2026-05-01", end="2026-05-01")],
        [ablation_procedure(end="2026-05-01T09:01:00+08:00")],
    ],
)
def test_messages_carry_identifiers_codes_and_dates_only(resources: list[Resource]) -> None:
    text = _all_text(map_patient(resources, "p1"))
    assert text
    for forbidden in (FREE_TEXT, "Chen", "twitching", "Facial nerve procedure", "<div"):
        assert forbidden not in text


def test_every_reason_has_a_test_in_this_suite() -> None:
    # Guard: adding a Reason without mapping tests should be noticed here.
    tested = {
        Reason.NO_ABLATION, Reason.PROCEDURE_NOT_COMPLETED, Reason.PROCEDURE_DATE_MISSING,
        Reason.PERIOD_WITHOUT_TIMES, Reason.DURATION_INVALID, Reason.DURATION_OUT_OF_RANGE,
        Reason.DURATION_UNSUPPORTED_UNIT, Reason.NO_HB_IN_WINDOW, Reason.HB_PRELIMINARY_ONLY,
        Reason.HB_OUTSIDE_MODEL, Reason.HB_UNSUPPORTED_VALUE, Reason.REPEAT_PROCEDURE,
        Reason.RECURRENCE_RECORDED, Reason.LATER_TREATMENT,
        Reason.UNREADABLE_RECORD,  # tests/test_mappings_shapes.py
    }  # fmt: skip
    assert tested == set(Reason)


def test_outputs_are_frozen_values() -> None:
    inputs = map_patient(typical_patient(), "p1")
    assert hash(astuple(inputs.ablation)) is not None  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        inputs.patient_id = "p2"  # type: ignore[misc]
