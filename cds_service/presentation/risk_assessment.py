"""The assessment as a FHIR R4 ``RiskAssessment`` (clinical-presentation.md §7).

One resource for every surface that offers it: ``hfs-cds score --format fhir``, the SMART app's JSON
and the card's "Record this assessment in the chart" suggestion. It is built from the
:class:`Statement`, so its rationale and notes read exactly as the card and the page do, while
``probabilityDecimal`` keeps the raw fraction (to 4 dp; never floored to "<5%").

The resource is a chart record in English whatever the reader's language (its codes and displays
are data, and one resource should not mix languages); only the suggestion that offers it (label,
description) is said in the card's language.

Not validated with fhir.resources at run time: the shape is fixed here and every variant (HB grade,
duration source, CI or not) is validated in the tests; only ids, versions and numbers vary.
"""

from __future__ import annotations

from typing import Any

from cds_service.ids import new_uuid
from cds_service.presentation.statement import N_, RiskFigure, Statement
from fhir_mappings import Provenance, roman

MODEL_CARD_SYSTEM = "https://hfs-cds.example.org/fhir/CodeSystem/model-card"
PROJECT_SYSTEM = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-rfa"
UCUM = "http://unitsofmeasure.org"

OUTCOME_CODE = "hfs-recurrence"
OUTCOME_DISPLAY = "Recurrence of hemifacial spasm after radiofrequency ablation"
SUGGESTION_LABEL = N_("Record this assessment in the chart")


def risk_assessment(statement: Statement, patient_id: str | None) -> dict[str, Any]:
    """A FHIR R4 RiskAssessment (JSON) for a scored statement; ValueError for any other."""
    statement = statement.in_locale("en")
    a = statement.assessment
    ablation = a.inputs.ablation
    if not statement.scored or ablation is None or not statement.risks:
        raise ValueError(f"only a scored assessment has a RiskAssessment (this one is {a.status})")
    subject = patient_id or a.inputs.patient_id
    if not subject:
        raise ValueError("a RiskAssessment needs a patient (subject is required)")
    card = a.model
    sha = f" (sha256 {card.sha256[:12]})" if card.sha256 else ""
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "method": {
            "coding": [{"system": MODEL_CARD_SYSTEM, "code": card.id, "display": card.title}],
            "text": f"{card.id} {card.version}{sha}",
        },
        "code": {"text": "Risk of hemifacial spasm recurrence after radiofrequency ablation"},
        "subject": {"reference": f"Patient/{subject}"},
        "occurrenceDateTime": a.as_of.isoformat(),
    }
    # The index ablation is not a reason: R4 limits reasonReference to Condition, Observation,
    # DiagnosticReport and DocumentReference (fhir.resources does not check targets), and `parent`
    # means "part of". It is the first `basis` entry; `condition` is the hemifacial spasm whose
    # prognosis this is, exactly R4's "the condition being assessed".
    if a.inputs.diagnosis is not None and a.inputs.diagnosis.provenance.id:
        resource["condition"] = _reference(a.inputs.diagnosis.provenance, "Hemifacial spasm")
    resource["basis"] = _basis(statement)
    ended = ablation.ended_at.isoformat()
    resource["prediction"] = [_prediction(r, ended) for r in statement.risks]
    notes = [statement.coding_note, statement.uncertainty_note, statement.caveat]
    resource["note"] = [{"text": text} for text in notes if text]
    return resource


def record_suggestion(statement: Statement, patient_id: str | None) -> dict[str, Any]:
    """The CDS Hooks suggestion that files the RiskAssessment; never recommended (a record, not
    an action the model should push)."""
    resource = risk_assessment(statement, patient_id)
    assert statement.horizon is not None
    card, w = statement.assessment.model, statement.words
    return {
        "label": w.gettext(SUGGESTION_LABEL),
        "uuid": new_uuid(),
        "isRecommended": False,
        "actions": [
            {
                "type": "create",
                "description": w.gettext(
                    "Create a RiskAssessment: hemifacial spasm recurrence %(risk)s by "
                    "%(months)s months (model %(model)s %(version)s)"
                )
                % {
                    "risk": statement.horizon.text,
                    "months": f"{statement.horizon.month:g}",
                    "model": card.id,
                    "version": card.version,
                },
                "resource": resource,
            }
        ],
    }


def _basis(st: Statement) -> list[dict[str, Any]]:
    """The input resources with their versions: the ablation, then the operation time's source
    (the same Procedure, or a duration Observation), then the HB grade; each once."""
    a = st.assessment
    ablation, ot, hb = a.inputs.ablation, a.operation_time, a.hb_grade
    assert ablation is not None and ot and hb
    entries = [
        (ablation.provenance, "Index radiofrequency ablation"),
        (ot.provenance, f"Operation time {ot.minutes:.0f} min"),
        (
            hb.provenance,
            f"House-Brackmann grade {roman(hb.grade)}, {hb.hours_after_procedure:.0f} h after",
        ),
    ]
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str | None, str | None]] = set()
    for p, display in entries:
        key = (p.resource_type, p.id, p.version)
        if key not in seen:
            seen.add(key)
            out.append(_reference(p, display))
    return out


def _reference(p: Provenance, display: str) -> dict[str, Any]:
    """A versioned relative reference; a resource without an id is named by type only."""
    if p.id is None:
        return {"type": p.resource_type, "display": display}
    return {"reference": p.reference, "display": display}


def _prediction(r: RiskFigure, ablation_end: str) -> dict[str, Any]:
    rationale = (
        f"{r.text} by {r.month:g} months after the ablation ended ({ablation_end}); "
        f"{r.range_text} over the plausible codings of the unpublished inputs (a range, not a "
        "confidence interval)"
    )
    if r.ci_text:
        rationale += f"; 95% CI {r.ci_text}"
    return {
        "outcome": _outcome(),
        "probabilityDecimal": _probability(r.risk),
        # UCUM "mo" is the mean Julian month, 30.4375 days: the published card's days_per_month.
        "whenRange": {
            "low": {"value": 0, "unit": "mo", "system": UCUM, "code": "mo"},
            "high": _months(r.month),
        },
        "rationale": rationale + ".",
    }


def _probability(risk: float) -> float:
    """The fraction to 4 dp, but never a certainty that only rounding made: 0.99999 is 0.9999, not
    1.0, which an EHR would show as "100%" (clinical-presentation.md §1)."""
    value = round(risk, 4)
    if 0.0 < risk < 1.0:
        # Comparisons, not min(max()): the same value at a third of the cost (3 per card).
        if value < 0.0001:
            return 0.0001
        if value > 0.9999:
            return 0.9999
    return value


def _outcome() -> dict[str, Any]:
    """Built per prediction (no shared dict a caller could mutate). No SNOMED CT coding: we know
    no concept for this recurrence with certainty, and a wrong code in a chart is worse than none.
    """
    return {
        "coding": [{"system": PROJECT_SYSTEM, "code": OUTCOME_CODE, "display": OUTCOME_DISPLAY}],
        "text": "Recurrence of hemifacial spasm",
    }


def _months(value: float) -> dict[str, Any]:
    number: int | float = int(value) if float(value).is_integer() else value
    return {"value": number, "unit": "mo", "system": UCUM, "code": "mo"}
