"""CDS cards from an :class:`~cds_service.assessment.Assessment` (the CDS Hooks answer).

Not to be confused with the *model* card (``cds_service.model.ModelCard``). Cards follow CDS Hooks
2.0 §4: ``summary`` under 140 characters, GitHub-flavoured markdown ``detail`` with no raw HTML, a
``uuid`` so the EHR can send feedback, and no ``null`` or empty members anywhere.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cds_service.assessment import Assessment, Status
from cds_service.smart.context import app_context_for
from fhir_mappings import Provenance, Reason, roman

#: Reverse-domain key of the machine-readable assessment in ``card.extension``.
EXTENSION_KEY = "org.example.hfs-cds.assessment"
OVERRIDE_REASON_SYSTEM = "https://hfs-cds.example.org/fhir/CodeSystem/override-reason"
OVERRIDE_REASONS = (
    ("already-planned", "Follow-up already planned"),
    ("inputs-incorrect", "Operation time or House-Brackmann grade on record is wrong"),
    ("not-applicable", "Does not apply to this patient"),
    ("clinical-judgement", "Different plan on clinical judgement"),
)
_SUMMARY_LIMIT = 139
# Characters that carry inline markdown or HTML meaning; escaped in anything that came from the EHR.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|<>&~#])")


@dataclass(frozen=True, slots=True)
class CardContext:
    """What a card needs from the hook call besides the assessment."""

    patient_id: str
    user_id: str | None = None
    encounter_id: str | None = None
    app_launch_url: str | None = None  # the SMART app's launch URL, when the app is set up
    #: A matching follow-up order is already active or drafted: no follow-up suggestion then.
    follow_up_ordered: bool = False


def build_cards(assessment: Assessment, ctx: CardContext) -> list[dict[str, Any]]:
    """Zero or one card: nothing when no ablation is in the horizon, else a risk or an info card."""
    if assessment.status is Status.NOT_APPLICABLE:
        return []
    card = (
        _risk_card(assessment, ctx)
        if assessment.status is Status.SCORED
        else _not_scored_card(assessment)
    )
    if ctx.app_launch_url and assessment.inputs.ablation is not None:
        # The EHR adds iss and launch; appContext names the procedure the card is about.
        card["links"].insert(
            0,
            {
                "label": "Open the recurrence-risk app (curve, what-if)",
                "url": ctx.app_launch_url,
                "type": "smart",
                "appContext": app_context_for(assessment.inputs.ablation.provenance.reference),
            },
        )
    return [card]


# -- scored ------------------------------------------------------------------------------------------


def _risk_card(a: Assessment, ctx: CardContext) -> dict[str, Any]:
    assert a.tier is not None
    horizon = a.model.horizon_months
    risk_h = a.risk_at(horizon)
    upper = f", up to {_pct(risk_h.high)} under other codings" if a.tier_set_by_range else ""
    summary = (
        f"Hemifacial spasm recurrence risk after RFA: {_pct(risk_h.risk)} by {horizon:g} months"
        f"{upper} ({a.tier.label.lower()} tier)"
    )
    card = _base_card(a, summary[:_SUMMARY_LIMIT], a.tier.indicator, _risk_detail(a))
    suggestion = None if ctx.follow_up_ordered else _follow_up_suggestion(a, ctx)
    if suggestion:
        card["suggestions"] = [suggestion]
        card["selectionBehavior"] = "at-most-one"
    card["overrideReasons"] = [
        {"system": OVERRIDE_REASON_SYSTEM, "code": code, "display": display}
        for code, display in OVERRIDE_REASONS
    ]
    return card


def _risk_detail(a: Assessment) -> str:
    assert a.tier is not None and a.inputs.ablation is not None
    ablation = a.inputs.ablation
    risk_h = a.risk_at(a.model.horizon_months)
    lines = [
        f"**Estimated risk of recurrence after the ablation that ended "
        f"{ablation.ended_at.date().isoformat()}** ({_ref(ablation.provenance)})",
        "",
        "| By | Risk | Range under the coding assumptions |",
        "|---|---|---|",
    ]
    for p in a.risks:
        lines.append(f"| {p.month:g} months | {_pct(p.risk)} | {_pct(p.low)} to {_pct(p.high)} |")
    if a.conditional:
        c = a.conditional
        lines += [
            "",
            f"If still free of spasm today ({c.from_month:.1f} months after the ablation), the risk "
            f"of recurrence by {c.to_month:g} months is **{_pct(c.risk)}** "
            f"(range {_pct(c.low)} to {_pct(c.high)}).",
        ]
    lines += [
        "",
        f"**{a.tier.label} tier.** {a.tier.advice}"
        + (
            f" (The tier follows the upper end of the range, {_pct(risk_h.high)}, because "
            "under-calling risk is the harmful error.)"
            if a.tier_set_by_range
            else ""
        ),
        "",
        "**Inputs**",
        "",
        *_input_lines(a),
        "",
        *_assumptions_and_limitations(a),
    ]
    return "\n".join(lines)


def _input_lines(a: Assessment) -> list[str]:
    lines = []
    ot, hb = a.operation_time, a.hb_grade
    cut = a.model.operation_time.cut_minutes
    if ot:
        side = "over" if ot.minutes > cut else "not over"
        how = "start and end times of" if ot.source == "performedPeriod" else "duration recorded in"
        lines.append(
            f"- Operation time: **{ot.minutes:.0f} min** ({side} {cut:g} min, X1 = {a.x1:g}), from the "
            f"{how} {_ref(ot.provenance)}"
        )
    if hb:
        window = "" if hb.within_primary_window else " (outside the preferred 72-hour window)"
        lines.append(
            f"- House-Brackmann grade: **{roman(hb.grade)}** (X2 = {hb.grade}), recorded "
            f"{hb.hours_after_procedure:.0f} h after the ablation{window}, from {_ref(hb.provenance)}"
        )
    return lines


def _follow_up_suggestion(a: Assessment, ctx: CardContext) -> dict[str, Any] | None:
    """A draft ServiceRequest for the tier's reviews still ahead of the patient."""
    assert a.tier is not None and a.inputs.ablation is not None
    end = a.inputs.ablation.ended_at
    days = a.model.days_per_month
    upcoming = [
        (m, (end + timedelta(days=m * days)).date())
        for m in a.tier.follow_up_months
        if end + timedelta(days=m * days) > a.as_of
    ]
    if not upcoming:
        return None
    months = ", ".join(f"{m:g}" for m, _ in upcoming)
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "390906007",
                    "display": "Follow-up encounter",
                }
            ],
            "text": "Hemifacial spasm review after radiofrequency ablation",
        },
        "subject": {"reference": f"Patient/{ctx.patient_id}"},
        "occurrenceTiming": {"event": [d.isoformat() for _, d in upcoming]},
        "reasonReference": [{"reference": _plain_ref(a.inputs.ablation.provenance)}],
        "note": [
            {
                "text": (
                    f"Reviews at {months} months after the ablation ({a.tier.label.lower()} "
                    f"recurrence-risk tier, model {a.model.id} {a.model.version}). "
                    "Record the House-Brackmann grade at each visit."
                )
            }
        ],
    }
    if ctx.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{ctx.encounter_id}"}
    if ctx.user_id and ctx.user_id.split("/", 1)[0] in ("Practitioner", "PractitionerRole"):
        resource["requester"] = {"reference": ctx.user_id}
    return {
        "label": f"Order follow-up reviews at {months} months"[:80],
        "uuid": str(uuid.uuid4()),
        "isRecommended": True,
        "actions": [
            {
                "type": "create",
                "description": f"Create a draft follow-up ServiceRequest for reviews at {months} months",
                "resource": resource,
            }
        ],
    }


# -- not scored --------------------------------------------------------------------------------------


def _not_scored_card(a: Assessment) -> dict[str, Any]:
    problems = a.problems
    first = problems[0]
    headline = {
        Reason.HB_OUTSIDE_MODEL: "House-Brackmann grade is outside the model's range",
        Reason.REPEAT_PROCEDURE: "this is a repeat ablation",
        Reason.RECURRENCE_RECORDED: "a recurrence is already recorded",
        Reason.LATER_TREATMENT: "a later treatment is recorded",
        Reason.PROCEDURE_NOT_COMPLETED: "the ablation is not recorded as completed",
    }.get(first.reason, "inputs are missing or invalid")
    summary = f"HFS recurrence risk after RFA not calculated: {headline}"[:_SUMMARY_LIMIT]
    indicator = "warning" if any(p.reason is Reason.HB_OUTSIDE_MODEL for p in problems) else "info"
    lines = ["**The recurrence risk could not be calculated.**", ""]
    for p in problems:
        lines += [f"- {_md(p.message)} **To fix:** {_md(p.action)}"]
    derived = _input_lines(a)
    if derived:
        lines += ["", "**Inputs found**", "", *derived]
    lines += ["", *_assumptions_and_limitations(a)]
    return _base_card(a, summary, indicator, "\n".join(lines))


# -- shared ------------------------------------------------------------------------------------------


def _base_card(a: Assessment, summary: str, indicator: str, detail: str) -> dict[str, Any]:
    model = a.model
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": indicator,
        "detail": detail,
        "source": {
            "label": f"HFS-RFA recurrence model (Fei et al. 2022), {model.version}",
            "url": model.citation.url,
        },
        "links": [
            {
                "label": "Fei et al., Pain Physician 2022 (PubMed)",
                "url": model.citation.url,
                "type": "absolute",
            }
        ],
        "extension": {EXTENSION_KEY: a.to_json()},
    }


def _assumptions_and_limitations(a: Assessment) -> list[str]:
    model = a.model
    return [
        "**Assumptions** (the paper did not publish these; see the model card)",
        "",
        *[f"- {text}" for text in model.assumptions],
        "",
        "**Limitations**",
        "",
        *[f"- {text}" for text in model.limitations],
        "",
        f"Model {model.id} version {model.version}. {model.citation.text} "
        f"PMID {model.citation.pmid}. Informational only.",
    ]


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _plain_ref(p: Provenance) -> str:
    return f"{p.resource_type}/{p.id}" if p.id else p.resource_type


def _ref(p: Provenance) -> str:
    """A provenance reference for markdown: escaped, since ids and dates come from the EHR."""
    text = f"`{p.reference.replace('`', '')}`"
    return f"{text} ({_md(p.recorded)})" if p.recorded else text


def _md(text: str) -> str:
    """Escape markdown and HTML so EHR-supplied strings render as plain text."""
    return _MD_SPECIAL.sub(r"\\\1", text)
