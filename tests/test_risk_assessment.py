"""The assessment as a FHIR R4 RiskAssessment (clinical-presentation.md §7), and the suggestion
that records it: valid for fhir.resources R4B, faithful to the assessment's raw numbers, and
pointing at the exact versions of the resources that were scored."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from cds_service.assessment import Assessment, Assessor, Status
from cds_service.model import parse_model_card
from cds_service.model.card import DEFAULT_MODEL_CARD
from cds_service.presentation import present
from cds_service.presentation.risk_assessment import (
    MODEL_CARD_SYSTEM,
    PROJECT_SYSTEM,
    SUGGESTION_LABEL,
    record_suggestion,
    risk_assessment,
)
from fhir_mappings import load_value_sets
from tests import fhir_builders as fb
from tests.cds_invariants import assert_no_empty_members, assert_valid_card
from tests.hook_calls import iso

ABLATION_END = datetime(2026, 5, 1, 1, 42, tzinfo=UTC)
AS_OF = ABLATION_END + timedelta(days=100)  # 3.3 months later
UCUM = "http://unitsofmeasure.org"
#: A risk written as an absolute: "0%" or "100%" ("<5%" and ">95%" are fine).
CERTAINTY = re.compile(r"(?<![\d<>.])(?:100|0)%")
GRID = [(hb, minutes) for hb in ("I", "II", "III") for minutes in (20, 42)]


def _record(
    hb: str | None = "II", minutes: float = 42, *, diagnosis: bool = True, **hb_extra: Any
) -> list[dict[str, Any]]:
    resources_ = [
        fb.ablation_procedure(
            start=iso(ABLATION_END - timedelta(minutes=minutes)), end=iso(ABLATION_END)
        )
    ]
    if diagnosis:
        resources_.append(fb.hfs_condition())
    if hb is not None:
        effective = iso(ABLATION_END + timedelta(hours=20))
        resources_.append(fb.hb_observation(grade=hb, effective=effective, **hb_extra))
    return resources_


def _assess(assessor: Assessor, records: list[dict[str, Any]]) -> Assessment:
    return assessor.assess(records, "p1", as_of=AS_OF)


def _validated(resource: dict[str, Any]) -> RiskAssessment:
    assert_no_empty_members(resource, "RiskAssessment")
    # Round-trip through JSON text first: what an EHR receives is text, not Python objects.
    return RiskAssessment.model_validate(json.loads(json.dumps(resource)))


def _reference_targets_are_r4(resource: dict[str, Any]) -> None:
    """fhir.resources does not check reference targets; R4 does (e.g. no Procedure as a reason)."""
    for name in ("subject", "condition", "reasonReference", "basis", "parent"):
        value = resource.get(name)
        if value is None:
            continue
        extra = RiskAssessment.model_fields[name].json_schema_extra
        assert isinstance(extra, dict)
        allowed = extra["enum_reference_types"]
        assert isinstance(allowed, list)
        for ref in value if isinstance(value, list) else [value]:
            target = ref["reference"].split("/", 1)[0] if "reference" in ref else ref["type"]
            assert "Resource" in allowed or target in allowed, f"{name} -> {target}"


@pytest.mark.parametrize(("hb", "minutes"), GRID)
def test_a_valid_r4_risk_assessment_for_each_grade_and_time(
    assessor: Assessor, hb: str, minutes: int
) -> None:
    a = _assess(assessor, _record(hb, minutes))
    assert a.status is Status.SCORED
    st = present(a)
    resource = risk_assessment(st, "p1")

    model = _validated(resource)
    _reference_targets_are_r4(resource)
    assert model.status == "final"
    assert resource["subject"] == {"reference": "Patient/p1"}
    assert resource["occurrenceDateTime"] == AS_OF.isoformat()
    assert "reasonReference" not in resource
    assert resource["condition"]["reference"] == "Condition/hfs1/_history/1"
    # One prediction per report month, the raw fraction (4 dp) of the assessment, never floored.
    assert len(resource["prediction"]) == len(a.risks)
    for prediction, point in zip(resource["prediction"], a.risks, strict=True):
        assert prediction["probabilityDecimal"] == pytest.approx(point.risk, abs=1.0001e-4)
        assert 0 < prediction["probabilityDecimal"] < 1
        if 0.0001 <= round(point.risk, 4) <= 0.9999:
            assert prediction["probabilityDecimal"] == round(point.risk, 4)
        assert prediction["whenRange"]["low"] == {
            "value": 0,
            "unit": "mo",
            "system": UCUM,
            "code": "mo",
        }
        assert prediction["whenRange"]["high"]["value"] == point.month
        assert prediction["whenRange"]["high"]["code"] == "mo"
        assert prediction["outcome"]["coding"] == [
            {
                "system": PROJECT_SYSTEM,
                "code": "hfs-recurrence",
                "display": "Recurrence of hemifacial spasm after radiofrequency ablation",
            }
        ]
        assert "not a confidence interval" in prediction["rationale"]
        assert "95% CI" not in prediction["rationale"]  # the published card has no covariance
        assert not CERTAINTY.search(prediction["rationale"])
    # The notes say what the card says: coding sensitivity when any, uncertainty, the caveat.
    notes = [n["text"] for n in resource["note"]]
    expected = [t for t in (st.coding_note, st.uncertainty_note, st.caveat) if t]
    assert notes == expected
    assert any("informational only" in n for n in notes)


def test_rounding_never_makes_a_certainty(assessor: Assessor) -> None:
    """HB I, 20 min: all but 1 by 12 months, yet "1.0" would read "100%" in an EHR."""
    a = _assess(assessor, _record("I", 20))
    assert round(a.risk_at(12).risk, 4) == 1.0 and a.risk_at(12).risk < 1.0
    prediction = risk_assessment(present(a), "p1")["prediction"][-1]
    assert prediction["probabilityDecimal"] == 0.9999


def test_the_rationale_uses_the_card_s_words(assessor: Assessor) -> None:
    st = present(_assess(assessor, _record("II", 42)))
    resource = risk_assessment(st, "p1")
    for prediction, figure in zip(resource["prediction"], st.risks, strict=True):
        assert prediction["rationale"].startswith(f"{figure.text} by {figure.month:g} months")
        assert figure.range_text in prediction["rationale"]
        assert iso(ABLATION_END).replace("Z", "+00:00") in prediction["rationale"]


def test_a_coding_sensitive_estimate_says_so_in_a_note(assessor: Assessor) -> None:
    sensitive = [
        present(a)
        for a in (_assess(assessor, _record(hb, m)) for hb, m in GRID)
        if present(a).coding_note
    ]
    assert sensitive, "HB I and III are far from the anchor: some must be coding-sensitive"
    for st in sensitive:
        resource = risk_assessment(st, "p1")
        assert resource["note"][0]["text"] == st.coding_note


def test_method_names_the_model_card_id_version_and_hash(assessor: Assessor) -> None:
    a = _assess(assessor, _record())
    method = risk_assessment(present(a), "p1")["method"]
    card = a.model
    assert method["coding"] == [
        {"system": MODEL_CARD_SYSTEM, "code": card.id, "display": card.title}
    ]
    assert method["text"] == f"{card.id} {card.version} (sha256 {card.sha256[:12]})"


def test_basis_carries_every_input_with_its_version(assessor: Assessor) -> None:
    records = _record("II", 42, meta={"versionId": "7"})
    records[0]["meta"]["versionId"] = "3"
    resource = risk_assessment(present(_assess(assessor, records)), "p1")
    # performedPeriod gave the operation time: the Procedure is listed once, not twice.
    assert [b["reference"] for b in resource["basis"]] == [
        "Procedure/rfa1/_history/3",
        "Observation/hb1/_history/7",
    ]
    assert resource["basis"][1]["display"] == "House-Brackmann grade II, 20 h after"


def test_a_duration_observation_is_part_of_the_basis(assessor: Assessor) -> None:
    """Procedure with a date only: the operation time comes from the duration Observation."""
    records = [
        fb.ablation_procedure(start=None, end=None, performed=iso(ABLATION_END)),
        fb.duration_observation(value=42, effective=iso(ABLATION_END), meta={"versionId": "2"}),
        fb.hb_observation(effective=iso(ABLATION_END + timedelta(hours=20))),
    ]
    a = _assess(assessor, records)
    assert a.status is Status.SCORED and a.operation_time is not None
    assert a.operation_time.source == "duration-observation"
    resource = risk_assessment(present(a), "p1")
    _validated(resource)
    assert [b["reference"] for b in resource["basis"]] == [
        "Procedure/rfa1/_history/1",
        "Observation/dur1/_history/2",
        "Observation/hb1/_history/1",
    ]
    assert resource["basis"][1]["display"] == "Operation time 42 min"
    assert "condition" not in resource  # no hemifacial spasm Condition in this record


def test_a_refit_card_puts_the_95_percent_ci_in_the_rationale() -> None:
    raw = json.loads(
        (resources.files("cds_service.model") / "model_cards" / DEFAULT_MODEL_CARD).read_text()
    )
    raw["fit"]["covariance"] = [[0.09, 0.01], [0.01, 0.25]]
    assessor = Assessor(parse_model_card(raw, sha256="refit"), load_value_sets())
    st = present(_assess(assessor, _record()))
    resource = risk_assessment(st, "p1")
    _validated(resource)
    for prediction, figure in zip(resource["prediction"], st.risks, strict=True):
        assert prediction["rationale"].endswith(f"; 95% CI {figure.ci_text}.")
    assert resource["method"]["text"].endswith("(sha256 refit)")


def test_the_patient_id_defaults_to_the_assessment_s(assessor: Assessor) -> None:
    st = present(_assess(assessor, _record()))
    assert risk_assessment(st, None)["subject"] == {"reference": "Patient/p1"}
    assert risk_assessment(st, "other")["subject"] == {"reference": "Patient/other"}
    anonymous = dataclasses.replace(
        st.assessment, inputs=dataclasses.replace(st.assessment.inputs, patient_id=None)
    )
    with pytest.raises(ValueError, match="subject is required"):
        risk_assessment(present(anonymous), None)


@pytest.mark.parametrize(
    ("records", "status"),
    [
        (_record(hb=None), Status.NOT_SCORED),  # no grade on record
        (_record(hb="IV"), Status.NOT_SCORED),  # outside the model
        ([fb.hfs_condition()], Status.NOT_APPLICABLE),  # no ablation
    ],
    ids=["no-grade", "hb-iv", "no-ablation"],
)
def test_only_a_scored_assessment_has_one(
    assessor: Assessor, records: list[dict[str, Any]], status: Status
) -> None:
    st = present(_assess(assessor, records))
    assert st.assessment.status is status
    with pytest.raises(ValueError, match="only a scored assessment"):
        risk_assessment(st, "p1")
    with pytest.raises(ValueError, match="only a scored assessment"):
        record_suggestion(st, "p1")


def test_each_prediction_owns_its_outcome(assessor: Assessor) -> None:
    """Editing one resource (an EHR adapter adding a coding) must not change the next one."""
    st = present(_assess(assessor, _record()))
    first = risk_assessment(st, "p1")
    first["prediction"][0]["outcome"]["coding"].append({"code": "x"})
    assert len(risk_assessment(st, "p1")["prediction"][0]["outcome"]["coding"]) == 1


def test_the_suggestion_records_it_and_is_never_recommended(assessor: Assessor) -> None:
    st = present(_assess(assessor, _record("II", 42)))
    suggestion = record_suggestion(st, "p1")
    assert suggestion["label"] == SUGGESTION_LABEL == "Record this assessment in the chart"
    assert suggestion["isRecommended"] is False
    (action,) = suggestion["actions"]
    assert action["type"] == "create"
    assert action["resource"] == risk_assessment(st, "p1")
    assert "61%" in action["description"] and st.assessment.model.version in action["description"]
    # The repository's CDS Hooks invariants, on a minimal card carrying it beside another
    # suggestion ("any": the clinician may order follow-up and record the assessment).
    card: dict[str, Any] = {
        "uuid": "0b8e3c1a-3f4e-4a8e-9c55-0d6f6b0f1c11",
        "summary": st.summary,
        "indicator": st.indicator,
        "source": {"label": "HFS recurrence after RFA"},
        "selectionBehavior": "any",
        "suggestions": [suggestion, record_suggestion(st, "p1")],
    }
    assert_valid_card(card)
    assert suggestion["uuid"] != card["suggestions"][1]["uuid"]
