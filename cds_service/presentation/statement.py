"""What every surface says about one assessment (clinical-presentation.md), decided once.

:func:`present` turns an :class:`~cds_service.assessment.Assessment` into a :class:`Statement`: the
display numbers, the estimate tier (from the point estimate) and the schedule tier (from the upper
end of the coding range) with why they differ, the reviews still ahead with their dates, the
indicator and the caveats. The CDS card, the SMART page and the CLI only lay it out; none of them
formats a risk or chooses a tier, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

from cds_service.assessment import Assessment, Status
from cds_service.model import ModelCard, RecurrenceModel, Tier
from cds_service.model.uncertainty import risk_interval
from cds_service.presentation.numbers import percent, percent_range
from fhir_mappings import Problem, Reason

Indicator = Literal["info", "warning", "critical"]

NO_CI_STATEMENT = (
    "The publication gives no standard errors, so no confidence interval can be computed."
)
CI_STATEMENT = (
    "95% confidence intervals come from the local fit's coefficient covariance (delta method; "
    "the baseline's own uncertainty is not included)."
)
RANGE_STATEMENT = (
    "The range spans the plausible codings of the unpublished inputs; it is not a confidence "
    "interval."
)

#: Why a patient is not scored, as a headline, by the first problem's reason.
NOT_SCORED_HEADLINES: dict[Reason, str] = {
    Reason.HB_OUTSIDE_MODEL: "House-Brackmann grade is outside the model's range",
    Reason.REPEAT_PROCEDURE: "this is a repeat ablation",
    Reason.RECURRENCE_RECORDED: "a recurrence is already recorded",
    Reason.LATER_TREATMENT: "a later treatment is recorded",
    Reason.PROCEDURE_NOT_COMPLETED: "the ablation is not recorded as completed",
    Reason.UNREADABLE_RECORD: "a record is not in FHIR R4 form and cannot be read",
    Reason.NO_HB_IN_WINDOW: "no House-Brackmann grade recorded after the ablation",
    Reason.HB_PRELIMINARY_ONLY: "the House-Brackmann grade is only preliminary",
    Reason.HB_UNSUPPORTED_VALUE: "the House-Brackmann grade cannot be read",
    Reason.PROCEDURE_DATE_MISSING: "the ablation has no date",
    Reason.PERIOD_WITHOUT_TIMES: "the operation time cannot be derived",
    Reason.DURATION_INVALID: "the operation time cannot be derived",
    Reason.DURATION_OUT_OF_RANGE: "the recorded operation time is implausible",
    Reason.DURATION_UNSUPPORTED_UNIT: "the operation time's unit is not supported",
}
NOT_SCORED_FALLBACK = "inputs are missing or invalid"


@dataclass(frozen=True, slots=True)
class _Figure:
    """A risk with its range over the codings, and both as people read them (formatted once:
    every surface reads them several times)."""

    risk: float
    low: float
    high: float
    text: str = field(init=False)
    range_text: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", percent(self.risk))
        object.__setattr__(self, "range_text", percent_range(self.low, self.high))


@dataclass(frozen=True, slots=True)
class RiskFigure(_Figure):
    """One horizon's risk (by ``month`` after the ablation); the raw fractions stay beside the text."""

    month: float = field(kw_only=True)
    ci: tuple[float, float] | None = field(default=None, kw_only=True)  # a refit card's 95% CI

    @property
    def ci_text(self) -> str | None:
        return percent_range(*self.ci) if self.ci else None

    @property
    def label(self) -> str:
        return f"{self.month:g} months"


@dataclass(frozen=True, slots=True)
class ConditionalFigure(_Figure):
    """The risk by ``to_month`` for a patient still free of spasm ``from_month`` after ablation."""

    from_month: float = field(kw_only=True)
    to_month: float = field(kw_only=True)

    @property
    def sentence(self) -> str:
        return (
            f"If still free of spasm at {self.from_month:.1f} months after the ablation: "
            f"{self.text} by {self.to_month:g} months (range {self.range_text})."
        )


@dataclass(frozen=True, slots=True)
class Review:
    """A review on the follow-up schedule, counted from the end of the ablation."""

    month: float
    on: date

    @property
    def text(self) -> str:
        return f"{self.on.isoformat()} ({self.month:g} month{'' if self.month == 1 else 's'})"


@dataclass(frozen=True, slots=True)
class Statement:
    """Everything a renderer needs to say about one assessment, in the same words everywhere."""

    assessment: Assessment
    indicator: Indicator
    summary: str  # under 140 characters (a CDS card summary)
    caveat: str  # the one caveat line (model card)
    # -- scored -----------------------------------------------------------------------------------
    risks: tuple[RiskFigure, ...] = ()
    horizon: RiskFigure | None = None
    conditional: ConditionalFigure | None = None
    estimate_tier: Tier | None = None  # labels the risk, chooses the risk sentence
    schedule_tier: Tier | None = None  # chooses the follow-up schedule (upper end of the range)
    risk_sentence: str = ""
    coding_note: str | None = None  # the 12-month range spans more than one tier
    schedule_note: str | None = None  # the schedule follows a higher tier than the estimate
    uncertainty_note: str = ""
    advice: str = ""
    reviews_ahead: tuple[Review, ...] = ()
    # -- not scored -------------------------------------------------------------------------------
    headline: str | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def scored(self) -> bool:
        return self.assessment.status is Status.SCORED

    @property
    def next_review(self) -> Review | None:
        return self.reviews_ahead[0] if self.reviews_ahead else None

    @property
    def schedule_text(self) -> str:
        """``"Next review 2027-01-05 (3 months); then 6 and 12 months."``"""
        if not self.reviews_ahead:
            return "Every review of the schedule has passed."
        first, *rest = self.reviews_ahead
        then = f"; then {_and([f'{r.month:g}' for r in rest])} months" if rest else ""
        return f"Next review {first.text}{then}."

    @property
    def tier_text(self) -> str:
        """``"Intermediate estimate"``: the estimate tier's label."""
        return f"{self.estimate_tier.label} estimate" if self.estimate_tier else ""

    @property
    def schedule_basis(self) -> str | None:
        """The schedule note in brief, for a short surface: ``"high-risk schedule: other
        plausible codings reach 94%"``; None when the schedule follows the estimate."""
        if self.schedule_note is None or self.schedule_tier is None or self.horizon is None:
            return None
        return (
            f"{self.schedule_tier.label.lower()}-risk schedule: other plausible codings reach "
            f"{percent(self.horizon.high)}"
        )


def present(a: Assessment) -> Statement:
    """The statement for an assessment (not-applicable ones have nothing to say but the reason)."""
    card = a.model
    if a.status is Status.SCORED:
        return _scored(a, card)
    problems = a.problems
    headline = NOT_SCORED_HEADLINES.get(problems[0].reason, NOT_SCORED_FALLBACK) if problems else ""
    if a.status is Status.NOT_APPLICABLE:
        headline = a.not_applicable_because or "no ablation on record"
    return Statement(
        assessment=a,
        indicator=(
            "warning" if any(p.reason is Reason.HB_OUTSIDE_MODEL for p in problems) else "info"
        ),
        summary=f"HFS recurrence risk after RFA not calculated: {headline}"[:139],
        caveat=card.caveat,
        headline=headline,
        problems=problems,
    )


def _scored(a: Assessment, card: ModelCard) -> Statement:
    assert a.operation_time is not None and a.hb_grade is not None
    intervals = _intervals(a, card)
    risks = tuple(
        RiskFigure(p.risk, p.low, p.high, month=p.month, ci=intervals[i] if intervals else None)
        for i, p in enumerate(a.risks)
    )
    at_horizon = a.risk_at(card.horizon_months)
    horizon = next(
        (r for r in risks if r.month == card.horizon_months),
        RiskFigure(at_horizon.risk, at_horizon.low, at_horizon.high, month=at_horizon.month),
    )
    estimate, schedule = a.estimate_tier, a.schedule_tier
    assert estimate is not None and schedule is not None
    coding_note = None
    if card.tier_for(horizon.low) is not schedule:
        coding_note = (
            f"Coding-sensitive: {horizon.range_text} by {card.horizon_months:g} months, depending "
            "on how the study coded its unpublished inputs."
        )
    schedule_note = None
    if schedule is not estimate:
        schedule_note = (
            f"Follow up on the {schedule.label.lower()}-risk schedule: under other plausible "
            f"codings the risk reaches {percent(horizon.high)}."
        )
    conditional = None
    if a.conditional:
        c = a.conditional
        conditional = ConditionalFigure(
            c.risk, c.low, c.high, from_month=c.from_month, to_month=c.to_month
        )
    summary = (
        f"Hemifacial spasm recurrence after RFA: {horizon.text} by {card.horizon_months:g} "
        f"months ({estimate.label.lower()} estimate)"
    )
    if coding_note:
        summary += f"; {horizon.range_text} under other codings"
    return Statement(
        assessment=a,
        indicator=estimate.indicator,
        summary=summary[:139],
        caveat=card.caveat,
        risks=risks,
        horizon=horizon,
        conditional=conditional,
        estimate_tier=estimate,
        schedule_tier=schedule,
        risk_sentence=estimate.risk_sentence,
        coding_note=coding_note,
        schedule_note=schedule_note,
        uncertainty_note=CI_STATEMENT if intervals else NO_CI_STATEMENT,
        advice=schedule.advice,
        reviews_ahead=reviews_ahead(a, schedule),
    )


def tier_for(card: ModelCard, risk_12m: float) -> Tier:
    """The tier of a 12-month risk (for typed-in what-if inputs; assessments carry theirs)."""
    return card.tier_for(risk_12m)


def reviews_ahead(a: Assessment, tier: Tier) -> tuple[Review, ...]:
    """The tier's reviews still after ``a.as_of``, dated from the end of the ablation."""
    if a.inputs.ablation is None:
        return ()
    end = a.inputs.ablation.ended_at
    days = a.model.days_per_month
    out = []
    for month in tier.follow_up_months:
        moment = end + timedelta(days=month * days)
        if moment > a.as_of:
            out.append(Review(month, moment.date()))
    return tuple(out)


_MODELS: dict[str, tuple[ModelCard, RecurrenceModel]] = {}


def _intervals(a: Assessment, card: ModelCard) -> list[tuple[float, float]] | None:
    """95% CIs at the report months for a card with a covariance (a local refit), else None."""
    if card.covariance is None or a.operation_time is None or a.hb_grade is None:
        return None
    key = f"{card.id}@{card.version}#{card.sha256}#{id(card)}"
    if key not in _MODELS:
        _MODELS[key] = (card, RecurrenceModel(card))  # the card is kept alive with its model
    model = _MODELS[key][1]
    return risk_interval(
        model, a.operation_time.minutes, a.hb_grade.grade, [p.month for p in a.risks]
    )


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
