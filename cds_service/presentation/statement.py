"""What every surface says about one assessment (clinical-presentation.md), decided once.

:func:`present` turns an :class:`~cds_service.assessment.Assessment` into a :class:`Statement`: the
display numbers, the estimate tier (from the point estimate) and the schedule tier (from the upper
end of the coding range) with why they differ, the reviews still ahead with their dates, the
indicator and the caveats. The CDS card, the SMART page and the CLI only lay it out; none of them
formats a risk or chooses a tier, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal

from cds_service.assessment import Assessment, NotApplicable, Status, moment
from cds_service.i18n import DEFAULT, Locale
from cds_service.model import ModelCard, RecurrenceModel, Tier
from cds_service.model.card import CardTexts
from cds_service.model.uncertainty import risk_interval
from cds_service.presentation.numbers import percent
from cds_service.presentation.wording import Wording, per_card, wording
from fhir_mappings import Problem, Reason
from fhir_mappings.frozen import fast_init

Indicator = Literal["info", "warning", "critical"]

# The fixed sentences, as catalogue msgids (N_ marks them for extraction; a Wording translates).


def N_(message: str) -> str:
    return message


NO_CI_STATEMENT = N_(
    "The publication gives no standard errors, so no confidence interval can be computed."
)
# i18n: %(ci)s is "95%"
CI_STATEMENT = N_(
    "%(ci)s confidence intervals come from the local fit's coefficient covariance (delta method; "
    "the baseline's own uncertainty is not included)."
)
RANGE_STATEMENT = N_(
    "The range spans the plausible codings of the unpublished inputs; it is not a confidence "
    "interval."
)

#: Why a patient is not scored, as a headline, by the first problem's reason (msgids).
NOT_SCORED_HEADLINES: dict[Reason, str] = {
    Reason.HB_OUTSIDE_MODEL: N_("House-Brackmann grade is outside the model's range"),
    Reason.REPEAT_PROCEDURE: N_("this is a repeat ablation"),
    Reason.RECURRENCE_RECORDED: N_("a recurrence is already recorded"),
    Reason.LATER_TREATMENT: N_("a later treatment is recorded"),
    Reason.PROCEDURE_NOT_COMPLETED: N_("the ablation is not recorded as completed"),
    Reason.UNREADABLE_RECORD: N_("a record is not in FHIR R4 form and cannot be read"),
    Reason.NO_HB_IN_WINDOW: N_("no House-Brackmann grade recorded after the ablation"),
    Reason.HB_PRELIMINARY_ONLY: N_("the House-Brackmann grade is only preliminary"),
    Reason.HB_UNSUPPORTED_VALUE: N_("the House-Brackmann grade cannot be read"),
    Reason.PROCEDURE_DATE_MISSING: N_("the ablation has no date"),
    Reason.PERIOD_WITHOUT_TIMES: N_("the operation time cannot be derived"),
    Reason.DURATION_INVALID: N_("the operation time cannot be derived"),
    Reason.DURATION_OUT_OF_RANGE: N_("the recorded operation time is implausible"),
    Reason.DURATION_UNSUPPORTED_UNIT: N_("the operation time's unit is not supported"),
}
NOT_SCORED_FALLBACK = N_("inputs are missing or invalid")


@dataclass(frozen=True, slots=True)
class _Figure:
    """A risk with its range over the codings, and both as people read them (formatted once:
    every surface reads them several times). ``risk``/``low``/``high`` are the language-neutral
    numbers; ``text`` reads the same in every supported locale; ``range_text`` is in ``words``'."""

    risk: float
    low: float
    high: float
    words: Wording = field(default_factory=wording, kw_only=True, repr=False, compare=False)
    text: str = field(init=False)
    range_text: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", percent(self.risk))
        object.__setattr__(self, "range_text", self.range_in(self.words))

    def range_in(self, words: Wording) -> str:
        """The range as ``words``' language writes it."""
        return words.range(percent(self.low), percent(self.high))


@dataclass(frozen=True, slots=True)
class RiskFigure(_Figure):
    """One horizon's risk (by ``month`` after the ablation); the raw fractions stay beside the text."""

    month: float = field(kw_only=True)
    ci: tuple[float, float] | None = field(default=None, kw_only=True)  # a refit card's 95% CI

    @property
    def ci_text(self) -> str | None:
        return self.ci_in(self.words)

    def ci_in(self, words: Wording) -> str | None:
        """The 95% CI as ``words``' language writes it (None without a covariance)."""
        return words.range(percent(self.ci[0]), percent(self.ci[1])) if self.ci else None

    @property
    def label(self) -> str:
        return self.words.months(self.month)


@dataclass(frozen=True, slots=True)
class ConditionalFigure(_Figure):
    """The risk by ``to_month`` for a patient still free of spasm ``from_month`` after ablation."""

    from_month: float = field(kw_only=True)
    to_month: float = field(kw_only=True)

    @property
    def sentence(self) -> str:
        return self.words.gettext(
            "If still free of spasm at %(from_month)s months after the ablation: %(risk)s by "
            "%(to_month)s months (range %(range)s)."
        ) % {
            "from_month": f"{self.from_month:.1f}",
            "risk": self.text,
            "to_month": f"{self.to_month:g}",
            "range": self.range_text,
        }


@dataclass(frozen=True, slots=True)
class Review:
    """A review on the follow-up schedule, counted from the end of the ablation."""

    month: float
    on: date
    words: Wording = field(default_factory=wording, kw_only=True, repr=False, compare=False)

    @property
    def text(self) -> str:
        """``"2027-01-05 (3 months)"``; ``"2027年1月5日（3个月）"``."""
        return self.words.gettext("%(date)s (%(months)s)") % {
            "date": self.words.date(self.on),
            "months": self.words.months(self.month),
        }


@fast_init  # stores through the slots: 25 fields, 3.2 -> 1.9 us per statement (issue 12 benchmark)
@dataclass(frozen=True, slots=True)
class Statement:
    """Everything a renderer needs to say about one assessment, in the same words everywhere.

    The numbers (figures' fractions, tiers, review dates) do not depend on the language; the texts
    are in ``locale``. :meth:`in_locale` says the same assessment in another language.
    """

    assessment: Assessment
    indicator: Indicator
    summary: str  # under 140 characters (a CDS card summary)
    caveat: str  # the one caveat line (model card)
    locale: Locale = DEFAULT
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

    # -- said once, in ``locale`` (fields, not properties: renderers read them several times) ------
    #: ``"Next review 2027-01-05 (3 months); then 6 and 12 months."``
    schedule_text: str = ""
    #: ``"Intermediate estimate"``: the estimate tier's label.
    tier_text: str = ""
    #: ``"high-risk schedule"``: the schedule tier's name.
    schedule_label: str = ""
    #: The schedule note in brief, for a short surface: ``"high-risk schedule: other plausible
    #: codings reach 94%"``; None when the schedule follows the estimate.
    schedule_basis: str | None = None
    #: A plain default (fast_init takes no factory): wording() is one object per locale anyway.
    words: Wording = field(default=wording(), repr=False, compare=False)

    @property
    def scored(self) -> bool:
        return self.assessment.status is Status.SCORED

    @property
    def next_review(self) -> Review | None:
        return self.reviews_ahead[0] if self.reviews_ahead else None

    def in_locale(self, locale: Locale) -> Statement:
        """The same assessment said in another language (same numbers, same tiers and dates)."""
        return self if locale == self.locale else present(self.assessment, locale)

    def tier_label(self, tier: Tier) -> str:
        """A tier's label in this statement's language (the model card's own translation)."""
        return self.words.card(self.assessment.model).tier(tier).label


class _TierWords:
    """One tier of the card in one language, as a statement says it, with its reviews' offsets."""

    __slots__ = (
        "tier",
        "label_lower",
        "tier_text",
        "schedule_label",
        "advice",
        "risk_sentence",
        "offsets",
    )

    def __init__(self, w: Wording, card: ModelCard, tier: Tier, texts: CardTexts) -> None:
        said = texts.tier(tier)
        self.tier = tier
        self.label_lower = said.label.lower()
        self.tier_text, self.schedule_label = w.tier_phrases(said.label)
        self.advice, self.risk_sentence = said.advice, said.risk_sentence
        #: Each review's distance from the end of the ablation (the same for every patient).
        self.offsets = tuple(
            timedelta(days=month * card.days_per_month) for month in tier.follow_up_months
        )


class _Said:
    """What :func:`present` says alike for every patient of one model card in one language: the
    translated templates, the card's texts, the tiers' phrases, the reviews' offsets. Looked up and
    formatted per call they cost a quarter of ``present`` (24.7 -> 19.1 us thread CPU for the
    benchmark's patient, issue 12); :func:`_said` keeps them per language and card."""

    __slots__ = (
        "caveat",
        "months",
        "tiers",
        "uncertainty",
        "summary",
        "other_codings",
        "coding_note",
        "schedule_note",
        "schedule_basis",
        "all_passed",
        "next_review",
        "next_then",
    )

    def __init__(self, w: Wording, card: ModelCard) -> None:
        texts = w.card(card)
        self.caveat = texts.caveat
        self.months = f"{card.horizon_months:g}"
        self.tiers = {t.id: _TierWords(w, card, t, texts) for t in card.tiers}
        self.uncertainty = (
            uncertainty_statement(w, covariance=False),
            uncertainty_statement(w, covariance=True),
        )
        self.summary = w.gettext(
            "Hemifacial spasm recurrence after RFA: %(risk)s by %(months)s months (%(tier)s "
            "estimate)"
        )
        self.other_codings = w.gettext("; %(range)s under other codings")
        self.coding_note = w.gettext(
            "Coding-sensitive: %(range)s by %(months)s months, depending on how the study coded "
            "its unpublished inputs."
        )
        self.schedule_note = w.gettext(
            "Follow up on the %(tier)s-risk schedule: under other plausible codings the risk "
            "reaches %(high)s."
        )
        self.schedule_basis = w.gettext("%(schedule)s: other plausible codings reach %(high)s")
        self.all_passed = w.gettext("Every review of the schedule has passed.")
        self.next_review = w.gettext("Next review %(review)s.")
        self.next_then = w.gettext("Next review %(review)s; then %(months)s months.")

    def coding_note_for(self, range_text: str) -> str:
        return self.coding_note % {"range": range_text, "months": self.months}


_said = per_card(_Said)


def _schedule_text(said: _Said, reviews: tuple[Review, ...], then: str | None) -> str:
    if not reviews:
        return said.all_passed
    first = reviews[0]
    if len(reviews) == 1:
        return said.next_review % {"review": first.text}
    return said.next_then % {"review": first.text, "months": then}


def present(a: Assessment, locale: Locale = DEFAULT) -> Statement:
    """The statement for an assessment (not-applicable ones have nothing to say but the reason)."""
    card = a.model
    w = wording(locale)
    said = _said(w, card)
    if a.status is Status.SCORED:
        return _scored(a, card, w, said)
    problems = a.problems
    headline = (
        w.gettext(NOT_SCORED_HEADLINES.get(problems[0].reason, NOT_SCORED_FALLBACK))
        if problems
        else ""
    )
    if a.status is Status.NOT_APPLICABLE:
        headline = _not_applicable(a, w)
    summary = w.gettext("HFS recurrence risk after RFA not calculated: %(reason)s") % {
        "reason": headline
    }
    return Statement(
        assessment=a,
        indicator=(
            "warning" if any(p.reason is Reason.HB_OUTSIDE_MODEL for p in problems) else "info"
        ),
        summary=summary[:139],
        caveat=said.caveat,
        locale=locale,
        headline=headline,
        problems=problems,
        schedule_text=said.all_passed,
        words=w,
    )


def _not_applicable(a: Assessment, w: Wording) -> str:
    """Why there is nothing to assess, in ``w``'s language (the English reads exactly as the
    assessment's ``not_applicable_because``, which the JSON carries)."""
    if a.not_applicable is NotApplicable.BEYOND_HORIZON:
        return w.gettext(
            "the last ablation ended %(months)s months ago, beyond the model's "
            "%(horizon)s-month horizon"
        ) % {
            "months": f"{a.months_since_procedure or 0.0:.1f}",
            "horizon": f"{a.model.horizon_months:g}",
        }
    if a.not_applicable_as_of:
        # i18n: %(moment)s is a date, or a date and time with its UTC offset (ISO 8601)
        return w.gettext("no ablation on record as of %(moment)s") % {"moment": _moment(w, a.as_of)}
    return w.gettext("no ablation on record")


def _moment(w: Wording, when: datetime) -> str:
    """A date as the locale writes it when the moment is midnight (``--at 2026-04-30``), else the
    minute with its offset in ISO 8601 (English: exactly :func:`cds_service.assessment.moment`)."""
    if when.time() == datetime.min.time():
        return w.date(when.date())
    return moment(when)


def _scored(a: Assessment, card: ModelCard, w: Wording, said: _Said) -> Statement:
    assert a.operation_time is not None and a.hb_grade is not None
    intervals = _intervals(a, card)
    risks = tuple(
        RiskFigure(
            p.risk, p.low, p.high, month=p.month, ci=intervals[i] if intervals else None, words=w
        )
        for i, p in enumerate(a.risks)
    )
    horizon_month = card.horizon_months
    for horizon in risks:
        if horizon.month == horizon_month:
            break
    else:
        at_horizon = a.risk_at(horizon_month)
        horizon = RiskFigure(
            at_horizon.risk, at_horizon.low, at_horizon.high, month=at_horizon.month, words=w
        )
    estimate, schedule = a.estimate_tier, a.schedule_tier
    assert estimate is not None and schedule is not None
    estimate_words, schedule_words = said.tiers[estimate.id], said.tiers[schedule.id]
    high = percent(horizon.high)
    coding_note = None
    if card.tier_for(horizon.low) is not schedule:
        coding_note = said.coding_note_for(horizon.range_text)
    schedule_note = schedule_basis = None
    if schedule is not estimate:
        schedule_note = said.schedule_note % {"tier": schedule_words.label_lower, "high": high}
        schedule_basis = said.schedule_basis % {
            "schedule": schedule_words.schedule_label,
            "high": high,
        }
    conditional = None
    if a.conditional:
        c = a.conditional
        conditional = ConditionalFigure(
            c.risk, c.low, c.high, from_month=c.from_month, to_month=c.to_month, words=w
        )
    summary = said.summary % {
        "risk": horizon.text,
        "months": said.months,
        "tier": estimate_words.label_lower,
    }
    if coding_note:
        summary += said.other_codings % {"range": horizon.range_text}
    reviews, then = _ahead(a, schedule_words, w)
    return Statement(
        assessment=a,
        indicator=estimate.indicator,
        summary=summary[:139],
        caveat=said.caveat,
        locale=w.locale,
        risks=risks,
        horizon=horizon,
        conditional=conditional,
        estimate_tier=estimate,
        schedule_tier=schedule,
        risk_sentence=estimate_words.risk_sentence,
        coding_note=coding_note,
        schedule_note=schedule_note,
        uncertainty_note=said.uncertainty[bool(intervals)],
        advice=schedule_words.advice,
        reviews_ahead=reviews,
        schedule_text=_schedule_text(said, reviews, then),
        tier_text=estimate_words.tier_text,
        schedule_label=schedule_words.schedule_label,
        schedule_basis=schedule_basis,
        words=w,
    )


def uncertainty_statement(words: Wording, *, covariance: bool) -> str:
    """What the numbers' uncertainty is: a CI for a card with a covariance, else why there is none."""
    if covariance:
        return words.gettext(CI_STATEMENT) % {"ci": "95%"}
    return words.gettext(NO_CI_STATEMENT)


def tier_for(card: ModelCard, risk_12m: float) -> Tier:
    """The tier of a 12-month risk (for typed-in what-if inputs; assessments carry theirs)."""
    return card.tier_for(risk_12m)


def reviews_ahead(a: Assessment, tier: Tier, words: Wording | None = None) -> tuple[Review, ...]:
    """The tier's reviews still after ``a.as_of``, dated from the end of the ablation."""
    w = words or wording()
    return _ahead(a, _said(w, a.model).tiers[tier.id], w)[0]


def _ahead(a: Assessment, tier: _TierWords, w: Wording) -> tuple[tuple[Review, ...], str | None]:
    """The reviews still ahead, and the months after the next one as a list ("6 and 12")."""
    if a.inputs.ablation is None:
        return (), None
    end, as_of = a.inputs.ablation.ended_at, a.as_of
    out: list[Review] = []
    for month, offset in zip(tier.tier.follow_up_months, tier.offsets, strict=True):
        moment = end + offset
        if moment > as_of:
            out.append(Review(month, moment.date(), words=w))
    then = w.join([f"{r.month:g}" for r in out[1:]]) if len(out) > 1 else None
    return tuple(out), then


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
