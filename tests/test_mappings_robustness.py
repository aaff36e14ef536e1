"""Rules 8 and 9 as properties: whatever JSON an EHR sends, map_patient returns PatientInputs
(never raises), keeps its own invariants, and does not depend on the order of the resources."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_mappings import (
    AblationProcedure,
    HouseBrackmannGrade,
    OperationTime,
    PatientInputs,
    Problem,
    Reason,
    infer_patient_id,
    map_patient,
    resources_from_bundle,
)
from tests.fhir_builders import (
    CPT,
    HB_SYSTEM,
    ICD10PCS,
    PROJECT,
    UCUM,
    ablation_procedure,
    bundle,
    duration_observation,
    hb_observation,
    hfs_condition,
    mvd_procedure,
    patient,
    recurrence_condition,
    recurrence_observation,
)

PROPERTY = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Keys and strings the mapping reads, so random JSON reaches deep into the rules.
FHIR_KEYS = [
    "resourceType", "id", "meta", "versionId", "lastUpdated", "status", "code", "coding", "system",
    "display", "subject", "reference", "performedPeriod", "start", "end", "performedDateTime",
    "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued", "valueInteger",
    "valueCodeableConcept", "valueQuantity", "valueBoolean", "valueString", "value", "unit",
    "comparator", "partOf", "clinicalStatus", "verificationStatus", "onsetDateTime", "onsetPeriod",
    "recordedDate", "dataAbsentReason", "entry", "resource", "note", "text",
]  # fmt: skip
FHIR_STRINGS = [
    "Procedure", "Observation", "Condition", "Patient", "Bundle", "Encounter", "completed",
    "in-progress", "entered-in-error", "final", "preliminary", "amended", "refuted", "recurrence",
    "relapse", "Patient/p1", "Patient/p2", "Procedure/rfa1", "p1", "rfa1", "hb1", CPT, ICD10PCS,
    PROJECT, HB_SYSTEM, UCUM, "64640", "61458", "005M3ZZ", "hb-grade-post-rfa",
    "operation-duration", "hfs-recurrence", "G51.31", "I", "II", "IV", "VII", "min", "h", "s",
    "d", "2026", "2026-05", "2026-05-01", "2026-05-02T10:00:00+08:00", "2026-05-01T09:42:00Z",
    "2026-13-45", "",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(FHIR_STRINGS)
)
keys = st.sampled_from(FHIR_KEYS) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
resource_types = st.sampled_from(
    ["Procedure", "Observation", "Condition", "Patient", "Bundle", "X"]
)
small_json = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=8,
)
random_resources = st.builds(
    lambda rtype, body: {**body, "resourceType": rtype},
    resource_types,
    st.dictionaries(keys, small_json, max_size=6),
)


def valid_record() -> list[dict[str, Any]]:
    """Realistic resources touching every rule, as the starting point for mutations."""
    return [
        patient(),
        hfs_condition(),
        ablation_procedure(),
        ablation_procedure(id="rfa0", start="2025-10-01", end="2025-10-01"),
        mvd_procedure(),
        duration_observation(),
        hb_observation(),
        hb_observation(id="hb2", grade=3, effective="2026-05-05"),
        recurrence_observation(),
        recurrence_condition(),
        ablation_procedure(id="theirs", patient="p2"),
    ]


def check_invariants(inputs: PatientInputs) -> None:
    """What every result promises, however bad the input."""
    assert isinstance(inputs, PatientInputs)
    if inputs.ablation is None:
        assert inputs.operation_time is None and inputs.hb_grade is None
        assert len(inputs.exclusions) >= 1
    else:
        assert isinstance(inputs.ablation, AblationProcedure)
        assert inputs.ablation.ended_at.utcoffset() is not None
        assert inputs.operation_time is not None and inputs.hb_grade is not None
    for problem in inputs.problems:
        assert isinstance(problem, Problem) and problem.message and problem.action
    assert list(inputs.ignored) == sorted(set(inputs.ignored))
    minutes = getattr(inputs.operation_time, "minutes", None)
    assert minutes is None or (math.isfinite(minutes) and minutes > 0)
    grade = getattr(inputs.hb_grade, "grade", None)
    assert grade is None or 1 <= grade <= 3
    assert inputs.scorable == (
        inputs.ablation is not None
        and minutes is not None
        and grade is not None
        and not inputs.problems
    )


@PROPERTY
@given(st.lists(json_values, max_size=6))
def test_random_json_never_raises(items: list[Any]) -> None:
    check_invariants(map_patient(items, "p1"))
    check_invariants(map_patient(items))
    infer_patient_id(items)
    resources_from_bundle({"resourceType": "Bundle", "entry": items})


@PROPERTY
@given(st.lists(random_resources, max_size=6), st.sampled_from([None, "p1", "Patient/p1", ""]))
def test_random_resources_never_raise(resources: list[Any], patient_id: str | None) -> None:
    check_invariants(map_patient(resources, patient_id))
    check_invariants(map_patient(bundle(*resources)))


@st.composite
def mutated_records(draw: st.DrawFn) -> list[Any]:
    """Valid builder output, some resources sent twice, with a few elements replaced, removed,
    wrapped or stringified at random paths: the malformations an EHR actually sends."""
    resources: list[Any] = copy.deepcopy(valid_record())
    # Second copies of some resources (same id), so later mutations make versions that differ.
    for index in draw(st.lists(st.integers(min_value=0, max_value=len(resources) - 1), max_size=3)):
        resources.append(copy.deepcopy(resources[index]))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        parent: Any = resources
        key: Any = draw(st.integers(min_value=0, max_value=len(resources) - 1))
        # Walk down a random number of levels.
        for _ in range(draw(st.integers(min_value=0, max_value=5))):
            child = parent[key]
            if isinstance(child, dict) and child:
                parent, key = child, draw(st.sampled_from(sorted(child)))
            elif isinstance(child, list) and child:
                parent, key = child, draw(st.integers(min_value=0, max_value=len(child) - 1))
            else:
                break
        current = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "wrap", "stringify", "null", "number"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "wrap":
            parent[key] = [current]
        elif action == "stringify":
            parent[key] = str(current)
        elif action == "null":
            parent[key] = None
        elif action == "number":
            parent[key] = draw(st.integers() | st.floats())
        else:
            parent[key] = draw(json_values)
    return resources


@PROPERTY
@given(mutated_records())
def test_mutated_valid_resources_never_raise(resources: list[Any]) -> None:
    check_invariants(map_patient(resources, "p1"))


@PROPERTY
@given(mutated_records(), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_order(resources: list[Any], rng: Any) -> None:
    shuffled = resources[:]
    rng.shuffle(shuffled)
    assert map_patient(shuffled, "p1") == map_patient(resources, "p1")
    assert map_patient(shuffled) == map_patient(resources)


ZONES = {"+08:00": timezone(timedelta(hours=8)), "Z": UTC, "-05:00": timezone(timedelta(hours=-5))}


@PROPERTY
@given(
    st.integers(min_value=-600, max_value=600),
    st.integers(min_value=-24 * 10, max_value=24 * 10),
    st.sampled_from(sorted(ZONES)),
)
def test_durations_and_grade_times_around_every_boundary(
    minutes: int, hours: int, zone: str
) -> None:
    """An oracle for rules 5 and 6 on timed values, with the grade written in any time zone."""
    begin = datetime(2026, 5, 1, 9, 0, tzinfo=ZONES["+08:00"])
    end = begin + timedelta(minutes=minutes)
    graded = (end + timedelta(hours=hours)).astimezone(ZONES[zone])
    inputs = map_patient(
        [
            ablation_procedure(start=begin.isoformat(), end=end.isoformat()),
            hb_observation(effective=graded.isoformat().replace("+00:00", "Z")),
        ],
        "p1",
    )
    check_invariants(inputs)
    op, hb = inputs.operation_time, inputs.hb_grade
    if minutes <= 0:
        assert isinstance(op, Problem) and op.reason is Reason.DURATION_INVALID
    elif 5 <= minutes <= 180:
        assert isinstance(op, OperationTime) and op.minutes == minutes
    else:
        assert isinstance(op, Problem) and op.reason is Reason.DURATION_OUT_OF_RANGE
    if 0 <= hours <= 168:
        assert isinstance(hb, HouseBrackmannGrade) and hb.hours_after_procedure == hours
        assert hb.within_primary_window is (hours <= 72)
    else:
        assert isinstance(hb, Problem) and hb.reason is Reason.NO_HB_IN_WINDOW


DSTU2_SHAPED: list[Any] = [
    {
        "resourceType": "Procedure",
        "id": "old",
        "status": "completed",
        "patient": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": CPT, "code": "64640"}]},
        "performedPeriod": "2026-05-01",
    },
    {
        "resourceType": "Procedure",
        "id": "old2",
        "status": ["completed"],
        "subject": {"reference": "Patient/p1"},
        "code": [{"system": CPT, "code": "64640"}],
        "performedDateTime": {"value": "2026-05-01"},
    },
    {
        "resourceType": "Observation",
        "id": "obs",
        "status": "final",
        "subject": "Patient/p1",
        "code": {"coding": {"system": PROJECT, "code": "hb-grade-post-rfa"}},
        "valueInteger": "2",
        "effectiveDateTime": 20260501,
    },
    {
        "resourceType": "Condition",
        "id": "c",
        "patient": {"reference": "Patient/p1"},
        "clinicalStatus": "relapse",
        "verificationStatus": "confirmed",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "13753008"}]},
        "onsetDateTime": None,
    },
]


def test_dstu2_shaped_resources_are_never_read_and_a_dstu2_relapse_blocks_scoring() -> None:
    """The DSTU2 Condition (``patient``, ``clinicalStatus: "relapse"``) is a recurrence that cannot
    be read: it used to be skipped in silence, and the patient scored as if none were recorded."""
    inputs = map_patient(DSTU2_SHAPED, "p1")
    check_invariants(inputs)
    assert inputs.ablation is None and inputs.diagnosis is None
    mixed = map_patient([*DSTU2_SHAPED, ablation_procedure(), hb_observation()], "p1")
    assert not mixed.scorable
    assert [p.reason for p in mixed.problems] == [Reason.UNREADABLE_RECORD]
