"""What the risk page shows, prepared from an :class:`Assessment` (the template only lays it out).

Every number and every tier comes from the presentation layer (:mod:`cds_service.presentation`),
so a clinician reads the same words in the CDS card and in the app; nothing here formats a risk
or chooses a tier itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cds_service.assessment import Assessment, Status
from cds_service.gather.app_context import CardInputs, CardReference
from cds_service.model import RecurrenceModel, Tier
from cds_service.presentation import RiskFigure, Statement, percent, tier_for
from cds_service.presentation.wording import Wording, wording
from cds_service.smart.chart import Chart, Curve, build_chart, curve
from fhir_mappings import Provenance, grade_from_roman, roman

#: Grade -> numeral for the templates (the shared code set of fhir_mappings).
ROMAN = {grade: roman(grade) for grade in range(1, 7)}


@dataclass(frozen=True, slots=True)
class InputRow:
    """One line of the inputs table: what, the value, how it was coded, where it came from."""

    name: str
    value: str
    note: str
    source: str
    recorded: str | None


@dataclass(frozen=True, slots=True)
class WhatIf:
    """The risk for inputs the clinician typed in, next to the recorded ones: tiers chosen as
    :func:`~cds_service.presentation.present` chooses them (estimate from the point estimate,
    schedule from the upper end of the range at the horizon)."""

    minutes: float
    hb_grade: int
    rows: tuple[RiskFigure, ...]
    estimate_tier: Tier
    schedule_tier: Tier


@dataclass(frozen=True, slots=True)
class WhatIfInput:
    minutes: float
    hb_grade: int


def parse_what_if(
    model: RecurrenceModel, minutes: str | None, hb: str | None, w: Wording | None = None
) -> WhatIfInput | str | None:
    """Typed-in inputs, or a message saying what is wrong with them, or None when none were given."""
    w = w or wording()
    if not minutes and not hb:
        return None
    low, high = model.card.operation_time.valid_minutes
    g_low, g_high = model.card.hb_grade.model_grades
    bounds = {"low": f"{low:g}", "high": f"{high:g}"}
    try:
        value = float(minutes or "")
    except ValueError:
        return w.gettext("Operation time must be a number of minutes from %(low)s to %(high)s.") % (
            bounds
        )
    if not low <= value <= high:
        return w.gettext("Operation time must be from %(low)s to %(high)s minutes.") % bounds
    text = (hb or "").strip()
    grade = grade_from_roman(text) or (int(text) if text.isdigit() else None)
    if grade is None or not g_low <= grade <= g_high:
        return w.gettext(
            "The model covers House-Brackmann grades %(low)s to %(high)s only (grades IV-VI are "
            "outside it)."
        ) % {"low": ROMAN[g_low], "high": ROMAN[g_high]}
    return WhatIfInput(value, grade)


def what_if(
    model: RecurrenceModel, chosen: WhatIfInput, w: Wording | None = None
) -> tuple[WhatIf, Curve]:
    """Risks at the report months and the tiers for typed-in inputs, with their curve."""
    card = model.card
    months = sorted({*card.report_months, card.horizon_months})
    point, low, high = model.risk_with_range(chosen.minutes, chosen.hb_grade, months)
    rows = tuple(
        RiskFigure(
            float(point[i]), float(low[i]), float(high[i]), month=float(m), words=w or wording()
        )
        for i, m in enumerate(months)
        if m in card.report_months
    )
    at = months.index(card.horizon_months)
    result = WhatIf(
        chosen.minutes,
        chosen.hb_grade,
        rows,
        estimate_tier=tier_for(card, float(point[at])),
        schedule_tier=tier_for(card, float(high[at])),
    )
    return result, curve(model, chosen.minutes, chosen.hb_grade)


def chart_for(
    model: RecurrenceModel,
    a: Assessment,
    what_if_curve: Curve | None = None,
    w: Wording | None = None,
) -> Chart | None:
    """The chart of a scored assessment (None otherwise)."""
    if a.status is not Status.SCORED or a.operation_time is None or a.hb_grade is None:
        return None
    main = curve(model, a.operation_time.minutes, a.hb_grade.grade)
    return build_chart(
        model.card.horizon_months,
        main,
        [(p.month, p.risk) for p in a.risks],
        a.months_since_procedure,
        what_if_curve,
        today_label=(w or wording()).gettext("Today (%(months)s mo)"),
    )


def input_rows(a: Assessment, w: Wording | None = None) -> tuple[InputRow, ...]:
    """The index ablation, each model input (value, coding, source), and the diagnosis."""
    w = w or wording()
    rows = []
    ablation = a.inputs.ablation
    if ablation:
        ended = (
            ablation.ended_at.isoformat(sep=" ", timespec="minutes")
            if ablation.ended_at_has_time
            else ablation.ended_at.date().isoformat()
        )
        rows.append(
            InputRow(
                w.gettext("Ablation (time origin)"),
                w.gettext("ended %(when)s") % {"when": ended},
                w.gettext("from %(element)s") % {"element": ablation.ended_at_source},
                ablation.provenance.reference,
                ablation.provenance.recorded,
            )
        )
    ot = a.operation_time
    cut = a.model.operation_time.cut_minutes
    if ot:
        coded = f", X1 = {a.x1:g}" if a.x1 is not None else ""
        if ot.source == "performedPeriod":
            how = w.gettext("from the start and end times")
        else:
            how = w.gettext("from the recorded duration")
        side = (
            w.gettext("over %(cut)s min") if ot.minutes > cut else w.gettext("not over %(cut)s min")
        ) % {"cut": f"{cut:g}"}
        rows.append(
            InputRow(
                w.gettext("Operation time"),
                w.gettext("%(minutes)s min") % {"minutes": f"{ot.minutes:.0f}"},
                f"{side}{coded}; {how}",
                ot.provenance.reference,
                ot.provenance.recorded,
            )
        )
    hb = a.hb_grade
    if hb:
        recorded = (
            w.gettext("recorded %(hours)s h after the ablation")
            if hb.within_primary_window
            else w.gettext(
                "recorded %(hours)s h after the ablation (outside the preferred 72-hour window)"
            )
        ) % {"hours": f"{hb.hours_after_procedure:.0f}"}
        rows.append(
            InputRow(
                w.gettext("House-Brackmann grade"),
                ROMAN.get(hb.grade, str(hb.grade)),
                f"X2 = {hb.grade}; {recorded}",
                hb.provenance.reference,
                hb.provenance.recorded,
            )
        )
    diagnosis = a.inputs.diagnosis
    if diagnosis:
        code = diagnosis.code
        rows.append(
            InputRow(
                w.gettext("Diagnosis (context, not a model input)"),
                code.display or code.code,
                f"{code.code} ({_system_name(code.system)})",
                diagnosis.provenance.reference,
                diagnosis.provenance.recorded,
            )
        )
    return tuple(rows)


@dataclass(frozen=True, slots=True)
class CardNotice:
    """Why this page differs from the CDS card that opened it (clinical-presentation.md §5)."""

    changes: tuple[str, ...]  # what changed in the record, one sentence each
    figures: str | None  # the card's 12-month figure against the page's
    closing: str = "This page uses the current record."

    @property
    def text(self) -> str:
        return " ".join([*self.changes, *([self.figures] if self.figures else []), self.closing])


def card_notice(
    st: Statement,
    card: CardInputs | None,
    previous: Assessment | None = None,
    updated: Mapping[str, str] | None = None,
) -> CardNotice | None:
    """What to say when the card that opened the app used other inputs or showed another figure.

    ``previous`` is the assessment of the record with the versions the card named read back from
    the EHR, when they could be read: it gives the old values ("corrected from I to II").
    ``updated`` maps ``Type/id`` to the current resource's ``meta.lastUpdated``.
    """
    if card is None:
        return None
    a, w = st.assessment, st.words
    changes = _input_changes(a, card, previous, updated or {}, w)
    figures = None
    if card.risk_12m is not None:
        fill = {
            "shown": percent(card.risk_12m),
            "months": f"{a.model.horizon_months:g}",
            "page": st.horizon.text if st.horizon else "",
        }
        if st.horizon is None:
            figures = (
                w.gettext(
                    "The card showed %(shown)s by %(months)s months; from the current record the risk "
                    "cannot be calculated (see below)."
                )
                % fill
            )
        elif st.horizon.text != fill["shown"]:
            figures = (
                w.gettext(
                    "The card showed %(shown)s by %(months)s months; this page shows %(page)s."
                )
                % fill
            )
            if not changes:
                changes.append(
                    w.gettext("The record or the model has changed since the card was shown.")
                )
        elif changes:
            figures = (
                w.gettext("The %(months)s-month estimate is the same as on the card (%(shown)s).")
                % fill
            )
    if not changes and figures is None:
        return None
    return CardNotice(
        tuple(changes), figures, closing=w.gettext("This page uses the current record.")
    )


def _input_changes(
    a: Assessment,
    card: CardInputs,
    previous: Assessment | None,
    updated: Mapping[str, str],
    w: Wording,
) -> list[str]:
    """One sentence per input (procedure, operation time, HB grade) that differs from the card's."""
    ablation = a.inputs.ablation
    if ablation is None:
        return [
            w.gettext(
                "The card was about %(card)s; no ablation within the model's %(months)s months is "
                "on record now."
            )
            % {"card": card.procedure.reference, "months": f"{a.model.horizon_months:g}"}
        ]
    p = ablation.provenance
    if p.id != card.procedure.id:
        return [
            w.gettext(
                "The card that opened this app was about %(card)s; the most recent ablation on "
                "record is %(now)s, and this page is about that one."
            )
            % {"card": card.procedure.reference, "now": p.reference}
        ]
    changes: list[str] = []
    said: set[str] = set()
    ot, hb = a.operation_time, a.hb_grade
    old_ot = _old(previous.operation_time if previous else None, card.operation_time)
    old_hb = _old(previous.hb_grade if previous else None, card.hb_grade)
    for changed in (
        _changed(
            w,
            w.gettext("operation time"),
            card.operation_time,
            ot.provenance if ot else None,
            w.gettext("%(minutes)s min") % {"minutes": f"{old_ot.minutes:.0f}"} if old_ot else None,
            w.gettext("%(minutes)s min") % {"minutes": f"{ot.minutes:.0f}"} if ot else None,
            updated,
        ),
        _changed(
            w,
            w.gettext("House-Brackmann grade"),
            card.hb_grade,
            hb.provenance if hb else None,
            roman(old_hb.grade) if old_hb else None,
            roman(hb.grade) if hb else None,
            updated,
        ),
    ):
        if changed:
            said.add(changed[0])
            changes.append(changed[1])
    plain = f"Procedure/{p.id}"
    was, now = card.procedure.version, p.version
    if plain not in said and was and now and was != now:
        changes.append(
            w.gettext(
                "%(ref)s has changed since the card was shown (version %(was)s → %(now)s%(at)s)."
            )
            % {"ref": plain, "was": was, "now": now, "at": _at(updated.get(plain), w)}
        )
    return changes


def _old(value: Any, ref: CardReference | None) -> Any:
    """An input of the replayed assessment, only when it came from exactly the card's version."""
    if value is None or ref is None:
        return None
    p: Provenance = value.provenance
    if (p.resource_type, p.id, p.version) != (ref.resource_type, ref.id, ref.version):
        return None
    return value


def _changed(
    w: Wording,
    label: str,
    card_ref: CardReference | None,
    current: Provenance | None,
    old: str | None,
    new: str | None,
    updated: Mapping[str, str],
) -> tuple[str, str] | None:
    """``(Type/id, sentence)`` saying how one input differs from the card's, or None."""
    if card_ref is None:
        return None  # a card from before appContext named its inputs
    if current is None or current.id is None:
        return card_ref.plain, w.gettext(
            "The card used the %(input)s in %(card)s; the current record gives none the model "
            "can use."
        ) % {"input": label, "card": card_ref.reference}
    plain = f"{current.resource_type}/{current.id}"
    if plain != card_ref.plain:
        was = f" ({old})" if old else ""
        now = f" ({new})" if new else ""
        return plain, w.gettext(
            "The %(input)s now comes from %(now_ref)s%(now)s; the card used %(card)s%(was)s."
        ) % {
            "input": label,
            "now_ref": current.reference,
            "now": now,
            "card": card_ref.reference,
            "was": was,
        }
    if not card_ref.version or not current.version or card_ref.version == current.version:
        return None
    versions = w.gettext("%(ref)s version %(was)s → %(now)s") % {
        "ref": plain,
        "was": card_ref.version,
        "now": current.version,
    }
    fill = {
        "input": label,
        "Input": label[0].upper() + label[1:],
        "old": old,
        "new": new,
        "at": _at(updated.get(plain), w),
        "versions": versions,
        "ref": plain,
    }
    if old and new and old != new:
        return plain, w.gettext(
            "%(Input)s corrected from %(old)s to %(new)s%(at)s (%(versions)s)."
        ) % fill
    if old and new:
        return plain, w.gettext(
            "%(ref)s was updated since the card%(at)s (%(versions)s); the %(input)s is still %(new)s."
        ) % fill
    return plain, w.gettext(
        "The %(input)s on record has changed since the card (%(versions)s%(at)s)."
    ) % fill


def _at(last_updated: str | None, w: Wording | None = None) -> str:
    """`` at 2026-05-01 14:02 UTC`` from a ``meta.lastUpdated``; nothing when unreadable."""
    if not last_updated:
        return ""
    try:
        moment = datetime.fromisoformat(last_updated)
    except ValueError:
        return ""
    if moment.tzinfo is None:
        return ""
    return (w or wording()).gettext(" at %(moment)s") % {
        "moment": moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    }


def display_json(st: Statement, notice: CardNotice | None) -> dict[str, Any]:
    """The texts the page shows, for the app's JSON (the same words, from the same Statement)."""
    out: dict[str, Any] = {
        "summary": st.summary,
        "indicator": st.indicator,
        "caveat": st.caveat,
    }
    if notice:
        out["cardNotice"] = {
            "changes": list(notice.changes),
            **({"figures": notice.figures} if notice.figures else {}),
            "text": notice.text,
        }
    if st.scored and st.estimate_tier and st.schedule_tier:
        out["risks"] = [
            {
                "month": _month(r.month),
                "text": r.text,
                "rangeText": r.range_text,
                **({"ciText": r.ci_text} if r.ci_text else {}),
            }
            for r in st.risks
        ]
        if st.conditional:
            out["conditional"] = st.conditional.sentence
        out["estimateTier"] = {"id": st.estimate_tier.id, "label": st.tier_text}
        out["riskSentence"] = st.risk_sentence
        if st.coding_note:
            out["codingNote"] = st.coding_note
        out["scheduleTier"] = {
            "id": st.schedule_tier.id,
            "label": st.schedule_label,
        }
        if st.schedule_note:
            out["scheduleNote"] = st.schedule_note
        out["schedule"] = st.schedule_text
        out["reviewsAhead"] = [
            {"month": _month(r.month), "date": r.on.isoformat()} for r in st.reviews_ahead
        ]
        out["advice"] = st.advice
        out["uncertainty"] = st.uncertainty_note
    elif st.headline:
        out["headline"] = st.headline
    return out


def what_if_json_body(result: WhatIf, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The what-if answer for the page's script: raw fractions beside the display texts."""
    return {
        "inputs": {"operationMinutes": result.minutes, "houseBrackmannGrade": result.hb_grade},
        "risks": [
            {
                "month": _month(row.month),
                "risk": round(row.risk, 4),
                "low": round(row.low, 4),
                "high": round(row.high, 4),
                "text": row.text,
                "rangeText": row.range_text,
            }
            for row in result.rows
        ],
        "estimateTier": result.estimate_tier.id,
        "estimateTierLabel": (labels or {}).get(
            result.estimate_tier.id, result.estimate_tier.label
        ),
        "scheduleTier": result.schedule_tier.id,
        "scheduleTierLabel": (labels or {}).get(
            result.schedule_tier.id, result.schedule_tier.label
        ),
    }


def _month(month: float) -> int | float:
    return int(month) if float(month).is_integer() else month


def _system_name(system: str) -> str:
    return {
        "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
        "http://snomed.info/sct": "SNOMED CT",
    }.get(system, system)
