"""``hfs-cds report``: what the service said and what clinicians did with it.

Counts come from the audit trail (cards shown) joined to feedback on the card uuid, and on the
service, EHR issuer and tenant: only the feedback of the EHR that received a card counts for it
(the endpoint refuses any other since issue 15; rows stored before that are counted apart):

- cards by model id/version, status and tier, and by model and the software version that wrote
  them (``unknown`` for records from before the column existed);
- for the cards shown in the period: how many got feedback (CDS Hooks sends none for cards that
  were ignored), and of those, how many were accepted or overridden. A card's outcome is its
  latest feedback entry; override reasons are counted per overridden card;
- time from card to feedback: from the audit time to the card's first ``outcomeTimestamp``
  (median, and 90th percentile by the nearest-rank method; negative gaps from clock skew between
  the EHR and the service count as zero);
- feedback naming a card the audit trail does not know, or a card shown to another EHR (issuer
  or tenant) or by another service (received in the period), counted apart;
- per week (Monday, UTC): cards by tier, and the outcome of the cards shown that week. The HTML
  format draws these as an inline SVG chart (``templates/report.html``, geometry from
  :mod:`cds_service.presentation.chart`); the page loads nothing from anywhere.
"""

from __future__ import annotations

import gettext
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from sqlalchemy import and_, func, select

from cds_service.i18n import BCP47, DEFAULT, Locale, translations
from cds_service.presentation.chart import Scale, nice_max, stacked_bars
from cds_service.store.database import SQLITE_BEGIN, Store
from cds_service.store.schema import audit_record, feedback


def N_(message: str) -> str:  # marks a msgid for the catalogue (cds_service.i18n)
    return message


NOT_SCORED = "not-scored"
#: How a record without a software version (written before schema 4) is reported.
UNKNOWN_SOFTWARE = "unknown"
NO_FEEDBACK = "none"
OUTCOMES = ("accepted", "overridden", NO_FEEDBACK)
# Display names (catalogue msgids: N_ marks them; the renderers translate).
_OUTCOME_LABELS = {
    "accepted": N_("Accepted"),
    "overridden": N_("Overridden"),
    NO_FEEDBACK: N_("No feedback"),
}
_TIER_COLOURS = {"high": "#b03a2e", "intermediate": "#d68910", "low": "#1e8449"}
_OTHER_COLOURS = ("#1f618d", "#6c3483", "#117864", "#935116", "#2e4053")
_OUTCOME_COLOURS = {"accepted": "#2874a6", "overridden": "#884ea0", NO_FEEDBACK: "#d5d8dc"}
_NOT_SCORED_COLOUR = "#7f8c8d"


@dataclass(frozen=True, slots=True)
class ReportLabels:
    """Display names the store does not hold (from the model card and the card builder)."""

    tier_order: Sequence[str] = ()
    tier_labels: Mapping[str, str] = field(default_factory=dict)
    reason_displays: Mapping[tuple[str | None, str], str] = field(default_factory=dict)

    def category(self, key: str) -> str:
        if key == NOT_SCORED:
            return N_("Not scored")
        return self.tier_labels.get(key, key)


@dataclass(frozen=True, slots=True)
class TierCount:
    model_id: str
    model_version: str
    status: str
    tier: str | None
    cards: int


@dataclass(frozen=True, slots=True)
class SoftwareCount:
    """Cards of one model version written by one release of the service."""

    model_id: str
    model_version: str
    software_version: str  # ``unknown`` for records from before schema 4
    cards: int


@dataclass(frozen=True, slots=True)
class ReasonCount:
    system: str | None
    code: str
    display: str | None
    cards: int


@dataclass(frozen=True, slots=True)
class Durations:
    n: int
    median_seconds: float
    p90_seconds: float


@dataclass(frozen=True, slots=True)
class WeekCounts:
    week: date  # Monday (UTC)
    cards: Mapping[str, int]  # tier id or "not-scored" -> cards
    outcomes: Mapping[str, int]  # accepted / overridden / none -> cards shown that week


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: datetime
    since: datetime | None
    until: datetime | None
    cards: int
    by_tier: tuple[TierCount, ...]
    cards_with_feedback: int
    feedback_entries: int
    accepted: int
    overridden: int
    override_reasons: tuple[ReasonCount, ...]
    overrides_without_reason: int
    overrides_with_comment: int
    unknown_card_feedback: int
    time_to_feedback: Durations | None
    weeks: tuple[WeekCounts, ...]
    categories: tuple[str, ...]  # chart order: tiers, then "not-scored"
    labels: ReportLabels = field(default_factory=ReportLabels)
    by_software: tuple[SoftwareCount, ...] = ()

    def software_of(self, model_id: str, model_version: str) -> tuple[SoftwareCount, ...]:
        """The releases that wrote the cards of one model version, in version order."""
        return tuple(
            s
            for s in self.by_software
            if (s.model_id, s.model_version) == (model_id, model_version)
        )

    @property
    def feedback_rate(self) -> float | None:
        return self.cards_with_feedback / self.cards if self.cards else None

    @property
    def acceptance_rate(self) -> float | None:
        n = self.cards_with_feedback
        return self.accepted / n if n else None

    @property
    def override_rate(self) -> float | None:
        n = self.cards_with_feedback
        return self.overridden / n if n else None

    def to_json(self) -> dict[str, Any]:
        ttf = self.time_to_feedback
        return {
            "generatedAt": _iso(self.generated_at),
            "since": _iso(self.since) if self.since else None,
            "until": _iso(self.until) if self.until else None,
            "cards": {
                "total": self.cards,
                "byModelAndTier": [
                    {
                        "modelId": t.model_id,
                        "modelVersion": t.model_version,
                        "status": t.status,
                        "tier": t.tier,
                        "cards": t.cards,
                    }
                    for t in self.by_tier
                ],
                "byModelAndSoftware": [
                    {
                        "modelId": s.model_id,
                        "modelVersion": s.model_version,
                        "softwareVersion": s.software_version,
                        "cards": s.cards,
                    }
                    for s in self.by_software
                ],
            },
            "feedback": {
                "cardsWithFeedback": self.cards_with_feedback,
                "entries": self.feedback_entries,
                "accepted": self.accepted,
                "overridden": self.overridden,
                "feedbackRate": _rate(self.feedback_rate),
                "acceptanceRate": _rate(self.acceptance_rate),
                "overrideRate": _rate(self.override_rate),
                "overrideReasons": [
                    {"system": r.system, "code": r.code, "display": r.display, "cards": r.cards}
                    for r in self.override_reasons
                ],
                "overridesWithoutReason": self.overrides_without_reason,
                "overridesWithComment": self.overrides_with_comment,
                "unknownCardEntries": self.unknown_card_feedback,
                "timeToFeedbackSeconds": (
                    {"n": ttf.n, "median": ttf.median_seconds, "p90": ttf.p90_seconds}
                    if ttf
                    else None
                ),
            },
            "weeks": [
                {"week": w.week.isoformat(), "cards": dict(w.cards), "outcomes": dict(w.outcomes)}
                for w in self.weeks
            ],
        }


def build_report(
    store: Store,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    labels: ReportLabels | None = None,
    now: datetime | None = None,
) -> Report:
    """Read the audit trail and feedback for cards shown in ``[since, until)``."""
    labels = labels or ReportLabels()
    a, f = audit_record, feedback
    window = []
    if since is not None:
        window.append(a.c.recorded_at >= since)
    if until is not None:
        window.append(a.c.recorded_at < until)

    by_tier: Counter[tuple[str, str, str, str | None]] = Counter()
    by_software: Counter[tuple[str, str, str]] = Counter()
    week_cards: dict[date, Counter[str]] = defaultdict(Counter)
    week_outcomes: dict[date, Counter[str]] = defaultdict(Counter)
    with store.engine.connect() as conn:
        conn.execution_options(**{SQLITE_BEGIN: "DEFERRED"})
        cards = conn.execute(
            select(
                a.c.recorded_at,
                a.c.model_id,
                a.c.model_version,
                a.c.status,
                a.c.tier,
                a.c.software_version,
            )
            .where(*window)
            .execution_options(yield_per=5000)
        )
        for recorded_at, model_id, model_version, status, tier, software in cards:
            by_tier[(model_id, model_version, status, tier)] += 1
            by_software[(model_id, model_version, software or UNKNOWN_SOFTWARE)] += 1
            week = _week(recorded_at)
            week_cards[week][tier if tier else NOT_SCORED] += 1
            week_outcomes[week][NO_FEEDBACK] += 1

        rows = conn.execute(
            select(
                f.c.card_uuid,
                f.c.outcome,
                f.c.outcome_at,
                f.c.reason_system,
                f.c.reason_code,
                f.c.has_comment,
                a.c.recorded_at,
            )
            .join(a, _same_card(a, f))
            .where(*window)
            .order_by(f.c.card_uuid, f.c.outcome_at, f.c.id)
            .execution_options(yield_per=5000)
        )
        entries = 0
        latest: dict[str, tuple[str, str | None, str | None, bool, datetime]] = {}
        first_gap: dict[str, float] = {}
        for card, outcome, outcome_at, system, code, has_comment, recorded_at in rows:
            entries += 1
            latest[card] = (outcome, system, code, bool(has_comment), recorded_at)
            if card not in first_gap:
                first_gap[card] = max(0.0, (outcome_at - recorded_at).total_seconds())

        unknown_filter = [~select(a.c.id).where(_same_card(a, f)).exists()]
        if since is not None:
            unknown_filter.append(f.c.received_at >= since)
        if until is not None:
            unknown_filter.append(f.c.received_at < until)
        unknown = conn.execute(select(func.count()).select_from(f).where(*unknown_filter)).scalar()

    outcomes: Counter[str] = Counter()
    reasons: Counter[tuple[str | None, str]] = Counter()
    without_reason = with_comment = 0
    for outcome, system, code, has_comment, recorded_at in latest.values():
        outcomes[outcome] += 1
        week = _week(recorded_at)
        week_outcomes[week][NO_FEEDBACK] -= 1
        week_outcomes[week][outcome] += 1
        if outcome == "overridden":
            if code:
                reasons[(system, code)] += 1
            else:
                without_reason += 1
            with_comment += has_comment
    return Report(
        generated_at=now or datetime.now(UTC),
        since=since,
        until=until,
        cards=sum(by_tier.values()),
        by_tier=tuple(
            TierCount(m, v, s, t, n)
            for (m, v, s, t), n in sorted(
                by_tier.items(), key=lambda kv: (kv[0][0], kv[0][1], _tier_rank(kv[0][3], labels))
            )
        ),
        cards_with_feedback=len(latest),
        feedback_entries=entries,
        accepted=outcomes["accepted"],
        overridden=outcomes["overridden"],
        override_reasons=tuple(
            ReasonCount(system, code, labels.reason_displays.get((system, code)), n)
            for (system, code), n in sorted(
                reasons.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0] or "")
            )
        ),
        overrides_without_reason=without_reason,
        overrides_with_comment=with_comment,
        unknown_card_feedback=int(unknown or 0),
        time_to_feedback=_durations(first_gap.values()),
        weeks=_weeks(week_cards, week_outcomes),
        categories=tuple(
            sorted(
                {c for counts in week_cards.values() for c in counts},
                key=lambda c: _tier_rank(None if c == NOT_SCORED else c, labels),
            )
        ),
        labels=labels,
        by_software=tuple(
            SoftwareCount(m, v, s, n)
            for (m, v, s), n in sorted(by_software.items(), key=lambda kv: kv[0])
        ),
    )


def _same_card(a: Any, f: Any) -> Any:
    """A feedback row is about an audited card when the card was returned by the same service to
    the same EHR issuer and tenant (NULL matching NULL: no authentication, no tenant)."""
    return and_(
        a.c.card_uuid == f.c.card_uuid,
        a.c.service_id == f.c.service_id,
        a.c.issuer.is_not_distinct_from(f.c.issuer),
        a.c.tenant.is_not_distinct_from(f.c.tenant),
    )


# -- text ----------------------------------------------------------------------------------------


def render_text(report: Report, locale: Locale = DEFAULT) -> str:
    r, labels = report, report.labels
    t = _translator(locale)
    _ = t.gettext
    lines = [
        _("HFS-RFA recurrence CDS: cards and feedback, %(period)s") % {"period": _period(r, t)}
    ]
    lines += ["", _("Cards shown: %(n)s") % {"n": r.cards}]
    model = None
    for tc in r.by_tier:
        if (tc.model_id, tc.model_version) != model:
            model = (tc.model_id, tc.model_version)
            lines.append(f"  {tc.model_id} {tc.model_version}{_software(r, *model)}")
        name = _category(labels, tc.tier or NOT_SCORED, t)
        lines.append(f"    {name:<28} {tc.cards:>7}  {_pct(tc.cards, r.cards):>6}")
    lines += ["", _("Feedback (for the cards shown in the period)")]
    lines.append(
        "  "
        + _(
            "Cards with feedback: %(with)s of %(cards)s (%(share)s); the rest were ignored or "
            "not reported"
        )
        % {
            "with": r.cards_with_feedback,
            "cards": r.cards,
            "share": _pct(r.cards_with_feedback, r.cards),
        }
    )
    lines.append("  " + _("Feedback entries: %(n)s") % {"n": r.feedback_entries})
    accepted, overridden = _("Accepted:"), _("Overridden:")
    lines.append(f"  {accepted:<11} {r.accepted:>7}  {_pct(r.accepted, r.cards_with_feedback):>6}")
    lines.append(
        f"  {overridden:<11} {r.overridden:>7}  {_pct(r.overridden, r.cards_with_feedback):>6}"
    )
    if r.overridden:
        lines.append("  " + _("Override reasons (cards):"))
        named = [(_reason_label(x, t), x.cards) for x in r.override_reasons]
        if r.overrides_without_reason:
            named.append((_("(no reason given)"), r.overrides_without_reason))
        named.append((_("with a comment (the text is not stored)"), r.overrides_with_comment))
        width = max(len(label) for label, _n in named)
        lines += [f"    {label:<{width}} {n:>7}" for label, n in named]
    ttf = r.time_to_feedback
    if ttf:
        lines.append(
            "  "
            + _(
                "Time from card to feedback: median %(median)s, 90th percentile %(p90)s (n = %(n)s)"
            )
            % {
                "median": _duration(ttf.median_seconds, t),
                "p90": _duration(ttf.p90_seconds, t),
                "n": ttf.n,
            }
        )
    lines.append(
        "  "
        + _("Feedback for cards not in the audit trail (or shown to another EHR): %(n)s")
        % {"n": r.unknown_card_feedback}
    )
    if r.weeks:
        lines += ["", _("By week (Monday, UTC)")]
        cats = r.categories
        week = _("week")
        header = "  " + f"{week:<12}" + "".join(f"{_category(labels, c, t)[:12]:>13}" for c in cats)
        header += "".join(f"{_(_OUTCOME_LABELS[o])[:12]:>13}" for o in OUTCOMES)
        lines.append(header)
        for w in r.weeks:
            row = f"  {w.week.isoformat()}  " + "".join(f"{w.cards.get(c, 0):>13}" for c in cats)
            row += "".join(f"{w.outcomes.get(o, 0):>13}" for o in OUTCOMES)
            lines.append(row)
    return "\n".join(lines)


def _software(report: Report, model_id: str, model_version: str) -> str:
    """``  (hfs-cds 0.1.0: 5, unknown: 2)``: which releases wrote the model version's cards."""
    counts = report.software_of(model_id, model_version)
    if not counts:
        return ""
    return "  (hfs-cds " + ", ".join(f"{s.software_version}: {s.cards}" for s in counts) + ")"


def render_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2)


# -- html ----------------------------------------------------------------------------------------


def render_html(report: Report, locale: Locale = DEFAULT) -> str:
    """A self-contained page: tables and an inline SVG chart, no scripts, no external assets."""
    t = _translator(locale)
    env = Environment(
        extensions=["jinja2.ext.i18n"],
        loader=PackageLoader("cds_service.store", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.install_gettext_translations(t, newstyle=True)  # type: ignore[attr-defined]
    helpers = {
        "pct": _pct,
        "duration": lambda seconds: _duration(seconds, t),
        "reason_label": lambda reason: _reason_label(reason, t),
        "category": lambda key: _category(report.labels, key, t),
    }
    return env.get_template("report.html").render(
        r=report,
        period=_period(report, t),
        generated=_iso(report.generated_at),
        chart=_chart(report, t),
        lang=BCP47[locale],
        **helpers,
    )


def _chart(report: Report, t: gettext.NullTranslations) -> dict[str, Any] | None:
    """Two stacked-bar panels per week: cards by tier, and the outcome of those cards."""
    if not report.weeks:
        return None
    labels, weeks = report.labels, report.weeks
    tiers = {
        c: (_category(labels, c, t), _category_colour(c, i))
        for i, c in enumerate(report.categories)
    }
    outcomes = {o: (t.gettext(_OUTCOME_LABELS[o]), _OUTCOME_COLOURS[o]) for o in OUTCOMES}
    panels = []
    for top, title, series, counts in (
        (30, t.gettext("Cards per week by tier"), tiers, [w.cards for w in weeks]),
        (
            270,
            t.gettext("Outcome of the cards shown each week"),
            outcomes,
            [w.outcomes for w in weeks],
        ),
    ):
        stacks = [[(key, max(0, c.get(key, 0))) for key in series] for c in counts]
        axis_max = nice_max(max(sum(n for _, n in stack) for stack in stacks))
        y = Scale((0, axis_max), (top + 170, top), digits=None)  # panels 170 high
        ticks = [(v, y(v)) for v in (0, axis_max // 2, axis_max)]
        bars = stacked_bars(y, 50, 550, stacks)
        panels.append({"title": title, "series": series, "top": top, "ticks": ticks, "bars": bars})
    return {"panels": panels, "weeks": weeks, "label_every": max(1, math.ceil(len(weeks) / 8))}


# -- helpers -------------------------------------------------------------------------------------


def _week(moment: datetime) -> date:
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def _weeks(
    cards: Mapping[date, Counter[str]], outcomes: Mapping[date, Counter[str]]
) -> tuple[WeekCounts, ...]:
    if not cards:
        return ()
    week, last = min(cards), max(cards)
    out = []
    while week <= last:
        out.append(
            WeekCounts(
                week,
                {k: v for k, v in cards.get(week, Counter()).items() if v},
                {k: v for k, v in outcomes.get(week, Counter()).items() if v},
            )
        )
        week += timedelta(days=7)
    return tuple(out)


def _durations(values: Iterable[float]) -> Durations | None:
    ordered = sorted(values)
    if not ordered:
        return None
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return Durations(len(ordered), float(statistics.median(ordered)), float(p90))


def _tier_rank(tier: str | None, labels: ReportLabels) -> tuple[int, str]:
    if tier is None:
        return (len(labels.tier_order) + 1, "")
    if tier in labels.tier_order:
        position: int = list(labels.tier_order).index(tier)
        return (position, tier)
    return (len(labels.tier_order), tier)


def _category_colour(category: str, index: int) -> str:
    if category == NOT_SCORED:
        return _NOT_SCORED_COLOUR
    return _TIER_COLOURS.get(category, _OTHER_COLOURS[index % len(_OTHER_COLOURS)])


def _translator(locale: Locale) -> gettext.NullTranslations:
    """English reads the msgids as they are; other languages their catalogue."""
    return gettext.NullTranslations() if locale == DEFAULT else translations(locale)


def _category(labels: ReportLabels, key: str, t: gettext.NullTranslations) -> str:
    """A tier's label (the model card's own, in the labels' language) or "Not scored"."""
    return t.gettext(labels.category(key)) if key == NOT_SCORED else labels.category(key)


def _reason_label(reason: ReasonCount, t: gettext.NullTranslations | None = None) -> str:
    if reason.display:
        display = t.gettext(reason.display) if t else reason.display
        return f"{display} ({reason.code})"
    return f"{reason.code} ({reason.system})" if reason.system else reason.code


def _period(r: Report, t: gettext.NullTranslations | None = None) -> str:
    _ = (t or gettext.NullTranslations()).gettext
    if r.since and r.until:
        return _("cards shown from %(since)s to before %(until)s") % {
            "since": _day(r.since),
            "until": _day(r.until),
        }
    if r.since:
        return _("cards shown since %(since)s") % {"since": _day(r.since)}
    if r.until:
        return _("cards shown before %(until)s") % {"until": _day(r.until)}
    return _("all cards on record")


def _day(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    if moment.time() == datetime.min.time():
        return moment.date().isoformat()
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _rate(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def _duration(seconds: float, t: gettext.NullTranslations | None = None) -> str:
    _ = (t or gettext.NullTranslations()).gettext
    s = round(seconds)
    if s < 1:
        return _("under 1 s")
    if s < 60:
        return _("%(s)s s") % {"s": s}
    if s < 3600:
        m, s = divmod(s, 60)
        return (_("%(m)s min %(s)s s") if s else _("%(m)s min")) % {"m": m, "s": s}
    if s < 86400:
        h, rem = divmod(s, 3600)
        return _("%(h)s h %(m)s min") % {"h": h, "m": rem // 60}
    d, rem = divmod(s, 86400)
    return _("%(d)s d %(h)s h") % {"d": d, "h": rem // 3600}
