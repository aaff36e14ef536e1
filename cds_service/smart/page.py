"""What the risk page shows, prepared from an :class:`Assessment` (the template only lays it out).

Percentages are whole numbers formatted exactly as the CDS card formats them, so a clinician sees
the same numbers in the card and in the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from cds_service.assessment import Assessment, Status
from cds_service.model import RecurrenceModel, Tier
from cds_service.smart.chart import Chart, Curve, build_chart, curve
from cds_service.smart.context import CardProcedure
from fhir_mappings import Provenance, grade_from_roman, roman

#: Grade -> numeral for the templates (the shared code set of fhir_mappings).
ROMAN = {grade: roman(grade) for grade in range(1, 7)}


def pct(value: float) -> str:
    """A risk as the card shows it: ``0.1526`` → ``15%``."""
    return f"{value * 100:.0f}%"


@dataclass(frozen=True, slots=True)
class RiskRow:
    month: float
    risk: float
    low: float
    high: float

    @property
    def label(self) -> str:
        return f"{self.month:g} months"


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
    """The risk for inputs the clinician typed in, next to the recorded ones."""

    minutes: float
    hb_grade: int
    rows: tuple[RiskRow, ...]
    tier: Tier


@dataclass(frozen=True, slots=True)
class WhatIfInput:
    minutes: float
    hb_grade: int


def parse_what_if(
    model: RecurrenceModel, minutes: str | None, hb: str | None
) -> WhatIfInput | str | None:
    """Typed-in inputs, or a message saying what is wrong with them, or None when none were given."""
    if not minutes and not hb:
        return None
    low, high = model.card.operation_time.valid_minutes
    g_low, g_high = model.card.hb_grade.model_grades
    try:
        value = float(minutes or "")
    except ValueError:
        return f"Operation time must be a number of minutes from {low:g} to {high:g}."
    if not low <= value <= high:
        return f"Operation time must be from {low:g} to {high:g} minutes."
    text = (hb or "").strip()
    grade = grade_from_roman(text) or (int(text) if text.isdigit() else None)
    if grade is None or not g_low <= grade <= g_high:
        return (
            f"The model covers House-Brackmann grades {ROMAN[g_low]} to {ROMAN[g_high]} only "
            "(grades IV-VI are outside it)."
        )
    return WhatIfInput(value, grade)


def what_if(model: RecurrenceModel, chosen: WhatIfInput) -> tuple[WhatIf, Curve]:
    """Risks at the report months and the tier for typed-in inputs, with their curve."""
    card = model.card
    months = sorted({*card.report_months, card.horizon_months})
    point, low, high = model.risk_with_range(chosen.minutes, chosen.hb_grade, months)
    rows = tuple(
        RiskRow(float(m), float(point[i]), float(low[i]), float(high[i]))
        for i, m in enumerate(months)
        if m in card.report_months
    )
    tier = model.tier(float(high[months.index(card.horizon_months)]))
    return WhatIf(chosen.minutes, chosen.hb_grade, rows, tier), curve(
        model, chosen.minutes, chosen.hb_grade
    )


@dataclass(frozen=True, slots=True)
class Review:
    """A follow-up review the tier suggests, counted from the end of the ablation."""

    month: float
    on: date
    passed: bool


def reviews(a: Assessment) -> tuple[Review, ...]:
    """The tier's review dates (as in the card's follow-up suggestion), marking those already past."""
    if a.tier is None or a.inputs.ablation is None:
        return ()
    end = a.inputs.ablation.ended_at
    days = a.model.days_per_month
    out = []
    for month in a.tier.follow_up_months:
        moment = end + timedelta(days=month * days)
        out.append(Review(month, moment.date(), moment <= a.as_of))
    return tuple(out)


def risk_rows(a: Assessment) -> tuple[RiskRow, ...]:
    return tuple(RiskRow(p.month, p.risk, p.low, p.high) for p in a.risks)


def chart_for(
    model: RecurrenceModel, a: Assessment, what_if_curve: Curve | None = None
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
    )


def input_rows(a: Assessment) -> tuple[InputRow, ...]:
    """The index ablation, each model input (value, coding, source), and the diagnosis."""
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
                "Ablation (time origin)",
                f"ended {ended}",
                f"from {ablation.ended_at_source}",
                ablation.provenance.reference,
                ablation.provenance.recorded,
            )
        )
    ot = a.operation_time
    cut = a.model.operation_time.cut_minutes
    if ot:
        over = "over" if ot.minutes > cut else "not over"
        coded = f", X1 = {a.x1:g}" if a.x1 is not None else ""
        how = "start and end times" if ot.source == "performedPeriod" else "recorded duration"
        rows.append(
            InputRow(
                "Operation time",
                f"{ot.minutes:.0f} min",
                f"{over} {cut:g} min{coded}; from the {how}",
                ot.provenance.reference,
                ot.provenance.recorded,
            )
        )
    hb = a.hb_grade
    if hb:
        window = "" if hb.within_primary_window else " (outside the preferred 72-hour window)"
        rows.append(
            InputRow(
                "House-Brackmann grade",
                ROMAN.get(hb.grade, str(hb.grade)),
                f"X2 = {hb.grade}; recorded {hb.hours_after_procedure:.0f} h after the "
                f"ablation{window}",
                hb.provenance.reference,
                hb.provenance.recorded,
            )
        )
    diagnosis = a.inputs.diagnosis
    if diagnosis:
        code = diagnosis.code
        rows.append(
            InputRow(
                "Diagnosis (context, not a model input)",
                code.display or code.code,
                f"{code.code} ({_system_name(code.system)})",
                diagnosis.provenance.reference,
                diagnosis.provenance.recorded,
            )
        )
    return tuple(rows)


def card_notice(a: Assessment, card: CardProcedure | None) -> str | None:
    """What to say when the card that opened the app named another procedure or version."""
    ablation = a.inputs.ablation
    if card is None or ablation is None:
        return None
    p: Provenance = ablation.provenance
    if p.id != card.id:
        return (
            f"The card that opened this app was about {card.reference}; the most recent "
            f"ablation on record is {p.reference}, and this page is about that one."
        )
    if card.version and p.version and card.version != p.version:
        return (
            f"{p.reference} has changed since the card was shown (the card used version "
            f"{card.version}); this page uses the current record."
        )
    return None


def _system_name(system: str) -> str:
    return {
        "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
        "http://snomed.info/sct": "SNOMED CT",
    }.get(system, system)
