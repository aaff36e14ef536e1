"""Validate model cards on a cohort: discrimination, calibration, and an HTML report.

For each card, on the same cohort (follow-up censored at the card's horizon, as the fit does):

* **Harrell's C-index** of the linear predictor: among usable pairs (the shorter time is a
  recurrence; equal times count when the other patient was censored), the share where the patient
  who recurred first had the higher predicted risk; ties in the prediction count one half.
* **Calibration by risk tertile** at each report month (3, 6, 12): patients ranked by predicted
  risk (ties broken by cohort order) and split into three groups of near-equal size; the mean
  predicted risk of each group against its Kaplan-Meier observed risk, with a 95% confidence
  interval (Greenwood variance on the log-log scale). A group whose follow-up stops before the
  month has no observed value.
* **Calibration slope**: the coefficient of the linear predictor in a Cox model refitted on the
  cohort (1 is ideal; below 1 means predictions are too extreme), with its 95% CI.
* **Observed / expected** at the horizon: Kaplan-Meier risk of the whole cohort over the mean
  predicted risk (calibration-in-the-large).

:func:`render_html` lays the cards side by side (typically the published card and a refit) with an
inline-SVG calibration plot and Kaplan-Meier curves per tertile (predicted curves dashed); no
external assets, so the file can be mailed or archived as is. Performance measured on the cohort a
card was fitted on is apparent (optimistic) performance; the report says so.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cds_service.model import ModelCard, RecurrenceModel
from cds_service.model.engine import FloatArray
from cds_service.recalibration.cohort import Cohort
from cds_service.recalibration.coxph import CoxPH
from cds_service.recalibration.errors import CohortError, RecalibrationError

Z95 = 1.959963984540054
TERTILES = 3


# -- estimators -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KaplanMeier:
    """Kaplan-Meier survival just after each distinct event time, with Greenwood's sum."""

    times: FloatArray
    survival: FloatArray
    greenwood: FloatArray  # sum of d / (n (n - d)) up to each time
    last_time: float  # the largest follow-up time (event or censored)

    def at(self, t: float) -> tuple[float, float, float]:
        """Survival at ``t`` with a 95% log-log CI; NaNs when follow-up stops before ``t``."""
        if t > self.last_time:
            return math.nan, math.nan, math.nan
        i = int(np.searchsorted(self.times, t, side="right"))
        if i == 0:
            return 1.0, 1.0, 1.0
        s, v = float(self.survival[i - 1]), float(self.greenwood[i - 1])
        if s <= 0.0 or s >= 1.0 or v <= 0:
            return s, s, s
        half = Z95 * math.sqrt(v) / abs(math.log(s))
        return s, s ** math.exp(half), s ** math.exp(-half)


def kaplan_meier(time: ArrayLike, event: ArrayLike) -> KaplanMeier:
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64) == 1
    if t.size == 0:
        raise CohortError("Kaplan-Meier needs at least one patient")
    times, deaths = np.unique(t[e], return_counts=True)
    at_risk = len(t) - np.searchsorted(np.sort(t), times, side="left")
    factor = 1.0 - deaths / at_risk
    survival: FloatArray = np.cumprod(factor).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(at_risk > deaths, deaths / (at_risk * (at_risk - deaths)), np.inf)
    return KaplanMeier(times, survival, np.cumsum(terms), float(t.max()))


def harrell_c(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's concordance index; higher ``risk`` should mean an earlier recurrence."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64) == 1
    r = np.asarray(risk, dtype=np.float64)
    concordant = 0.0
    usable = 0.0
    events = np.flatnonzero(e)
    for start in range(0, len(events), 512):
        i = events[start : start + 512]
        ti, ri = t[i][:, None], r[i][:, None]
        # j outlived i: a later time, or the same time but censored (no recurrence seen).
        later = (t[None, :] > ti) | ((t[None, :] == ti) & ~e[None, :])
        usable += float(later.sum())
        concordant += float((later & (ri > r[None, :])).sum())
        concordant += 0.5 * float((later & (ri == r[None, :])).sum())
    if usable == 0:
        return math.nan
    return concordant / usable


# -- validation ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupCalibration:
    """One risk tertile at one month: mean predicted risk against Kaplan-Meier observed risk."""

    group: int  # 1 = lowest predicted risk
    month: float
    n: int
    events: int  # recurrences in the group by this month
    predicted: float
    observed: float  # NaN when the group's follow-up stops earlier
    observed_low: float
    observed_high: float


@dataclass(frozen=True)
class Validation:
    """Everything the report shows for one card on one cohort."""

    card: ModelCard
    label: str
    n: int
    events: int
    c_index: float
    slope: float
    slope_ci: tuple[float, float]
    observed_horizon: float
    predicted_horizon: float
    calibration: tuple[GroupCalibration, ...]
    groups: NDArray[np.intp]  # tertile of each patient (1-3)
    km: tuple[KaplanMeier, ...]  # one per tertile
    curve_months: FloatArray
    predicted_curves: FloatArray  # (tertile, month): mean predicted risk
    notes: tuple[str, ...] = ()

    @property
    def observed_expected(self) -> float:
        return (
            self.observed_horizon / self.predicted_horizon if self.predicted_horizon else math.nan
        )

    def at(self, group: int, month: float) -> GroupCalibration:
        for c in self.calibration:
            if c.group == group and c.month == month:
                return c
        raise KeyError((group, month))


def validate(card: ModelCard, cohort: Cohort, label: str | None = None) -> Validation:
    """Discrimination and calibration of ``card`` on ``cohort``."""
    n = len(cohort)
    if n < TERTILES * 2:
        raise CohortError(f"{n} patients are too few to validate (at least {TERTILES * 2})")
    horizon = card.horizon_months
    raw_t = cohort.time_months
    t = np.minimum(raw_t, horizon)
    e = ((cohort.event == 1) & (raw_t <= horizon)).astype(np.float64)
    model = RecurrenceModel(card)
    minutes, grades = cohort.operation_minutes, cohort.hb_grade
    try:
        lp = model.relative_log_hazard(minutes, grades)
    except ValueError as exc:
        raise CohortError(f"{card.label} cannot score this cohort: {exc}") from exc
    months = np.asarray(card.report_months, dtype=np.float64)
    risks = model.predict_risk(minutes, grades, months)  # (n, months)
    notes: list[str] = []

    order = np.argsort(lp, kind="stable")
    groups = np.empty(n, dtype=np.intp)
    for g, members in enumerate(np.array_split(order, TERTILES), start=1):
        groups[members] = g
    calibration: list[GroupCalibration] = []
    kms: list[KaplanMeier] = []
    for g in range(1, TERTILES + 1):
        mask = groups == g
        km = kaplan_meier(t[mask], e[mask])
        kms.append(km)
        for k, month in enumerate(months):
            s, s_lo, s_hi = km.at(float(month))
            calibration.append(
                GroupCalibration(
                    group=g,
                    month=float(month),
                    n=int(mask.sum()),
                    events=int(((t <= month) & (e == 1) & mask).sum()),
                    predicted=float(risks[mask, k].mean()),
                    observed=1.0 - s,
                    observed_low=1.0 - s_hi,
                    observed_high=1.0 - s_lo,
                )
            )
    try:
        slope_fit = CoxPH().fit(lp[:, None], t, e, names=["linear predictor"])
        slope = float(slope_fit.params_[0])
        lo, hi = (float(v) for v in slope_fit.confidence_intervals_[0])
    except RecalibrationError as exc:
        slope, lo, hi = math.nan, math.nan, math.nan
        notes.append(f"calibration slope not estimable: {exc}")
    overall = kaplan_meier(t, e).at(horizon)[0]
    curve_months = np.linspace(0.0, horizon, 49)
    mean_curves = np.zeros((TERTILES, curve_months.size))
    curve_risk = model.predict_risk(minutes, grades, curve_months[1:])
    for g in range(1, TERTILES + 1):
        mean_curves[g - 1, 1:] = curve_risk[groups == g].mean(axis=0)
    return Validation(
        card=card,
        label=label or f"{card.id} {card.version}",
        n=n,
        events=int(e.sum()),
        c_index=harrell_c(t, e, lp),
        slope=slope,
        slope_ci=(lo, hi),
        observed_horizon=1.0 - overall,
        predicted_horizon=float(risks[:, list(months).index(horizon)].mean())
        if horizon in months
        else float(model.predict_risk(minutes, grades, horizon).mean()),
        calibration=tuple(calibration),
        groups=groups,
        km=tuple(kms),
        curve_months=curve_months,
        predicted_curves=mean_curves,
        notes=tuple(notes),
    )


# -- text ---------------------------------------------------------------------------------------------


def render_text(validations: Sequence[Validation]) -> str:
    lines: list[str] = []
    for v in validations:
        lines.append(
            f"{v.label}  (fit: {v.card.fit.get('mode', '?')}, sha256 {v.card.sha256[:12]})"
        )
        lines.append(
            f"  C-index {v.c_index:.3f}; calibration slope {_f(v.slope)} "
            f"(95% CI {_f(v.slope_ci[0])} to {_f(v.slope_ci[1])}); observed/expected at "
            f"{v.card.horizon_months:g} months {_f(v.observed_expected)} "
            f"({_pct(v.observed_horizon)} observed, {_pct(v.predicted_horizon)} predicted)"
        )
        for c in v.calibration:
            lines.append(
                f"  tertile {c.group} by {c.month:>4g} months (n={c.n}, {c.events} recurrences): "
                f"predicted {_pct(c.predicted)}, observed {_pct(c.observed)} "
                f"({_pct(c.observed_low)} to {_pct(c.observed_high)})"
            )
        lines += [f"  note: {n}" for n in v.notes]
    return "\n".join(lines)


def _f(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.1f}%"


# -- HTML ---------------------------------------------------------------------------------------------

_MONTH_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e")
_GROUP_COLOURS = ("#2c7bb6", "#fdae61", "#d7191c")
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
.models { display: flex; flex-wrap: wrap; gap: 2rem; }
.model { flex: 1 1 25rem; max-width: 40rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: 0.9rem; }
svg text { font-size: 11px; fill: #333; }
"""


def render_html(
    validations: Sequence[Validation], cohort: Cohort, title: str = "Model card validation"
) -> str:
    """A self-contained HTML report: one column per card, side by side."""
    esc = html.escape
    counts = cohort.exclusion_counts()
    left_out = ", ".join(f"{esc(k)}: {v}" for k, v in counts.items()) if counts else "none"
    horizon = validations[0].card.horizon_months if validations else 12.0
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p>Cohort: "
        f"{esc(cohort.source)} {esc(cohort.location)}"
        + (f" (sha256 <code>{esc(cohort.sha256[:16])}</code>…)" if cohort.sha256 else "")
        + f"; {len(cohort)} patients, {validations[0].events if validations else 0} recurrences "
        f"within {horizon:g} months (follow-up censored there); left out: {left_out}.</p>",
    ]
    columns = [_model_html(v) for v in validations]
    foot = [
        '<p class="note">Tertiles: patients ranked by each card\'s predicted risk and split into '
        "three near-equal groups. Observed risk: Kaplan-Meier, 95% CI by Greenwood's variance on "
        "the log-log scale. Calibration slope: coefficient of the linear predictor refitted on "
        "this cohort (ideal 1). Measured on the cohort a card was fitted on, performance is "
        "apparent (optimistic); validate on patients not used for fitting when you can.</p>",
        "</body></html>",
    ]
    return "\n".join([*head, '<div class="models">', *columns, "</div>", *foot])


def _model_html(v: Validation) -> str:
    esc = html.escape
    card = v.card
    months = sorted({c.month for c in v.calibration})
    rows = "".join(
        f"<tr><td>{g}</td><td>{v.at(g, months[0]).n}</td>"
        + "".join(
            f"<td>{_pct(v.at(g, m).predicted)}</td><td>{_pct(v.at(g, m).observed)}</td>"
            for m in months
        )
        + "</tr>"
        for g in range(1, TERTILES + 1)
    )
    month_heads = "".join(f'<th colspan="2">{m:g} months</th>' for m in months)
    sub_heads = "<th>predicted</th><th>observed</th>" * len(months)
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in v.notes)
    return f"""<section class="model">
<h2>{esc(v.label)}</h2>
<p class="note">fit: {esc(str(card.fit.get("mode", "?")))}; model card sha256
<code>{esc(card.sha256[:16])}</code>…</p>
<table>
<tr><td>Harrell's C-index</td><td>{v.c_index:.3f}</td></tr>
<tr><td>Calibration slope (95% CI)</td><td>{_f(v.slope)}
({_f(v.slope_ci[0])} to {_f(v.slope_ci[1])})</td></tr>
<tr><td>Observed / expected at {card.horizon_months:g} months</td><td>{_f(v.observed_expected)}
({_pct(v.observed_horizon)} / {_pct(v.predicted_horizon)})</td></tr>
</table>
<h3>Calibration by risk tertile</h3>
{_calibration_svg(v)}
<h3>Kaplan-Meier by risk tertile (predicted dashed)</h3>
{_km_svg(v)}
<table>
<tr><th rowspan="2">Tertile</th><th rowspan="2">n</th>{month_heads}</tr>
<tr>{sub_heads}</tr>
{rows}
</table>
{notes}
</section>"""


def _calibration_svg(v: Validation) -> str:
    size, pad = 300.0, 48.0

    def sx(p: float) -> float:
        return pad + p * size

    def sy(p: float) -> float:
        return pad + (1.0 - p) * size

    parts = _axes(
        size, pad, [f"{p}%" for p in range(0, 101, 20)], "predicted risk", "observed risk"
    )
    parts.append(
        f'<line x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(1):.1f}" y2="{sy(1):.1f}" '
        'stroke="#999" stroke-dasharray="4 3"/>'
    )
    months = sorted({c.month for c in v.calibration})
    for k, month in enumerate(months):
        colour = _MONTH_COLOURS[k % len(_MONTH_COLOURS)]
        for c in (c for c in v.calibration if c.month == month):
            if math.isnan(c.observed):
                continue
            x = sx(c.predicted)
            parts.append(
                f'<line x1="{x:.1f}" y1="{sy(c.observed_low):.1f}" x2="{x:.1f}" '
                f'y2="{sy(c.observed_high):.1f}" stroke="{colour}"/>'
                f'<circle cx="{x:.1f}" cy="{sy(c.observed):.1f}" r="4" fill="{colour}">'
                f"<title>tertile {c.group}, {month:g} months: predicted {_pct(c.predicted)}, "
                f"observed {_pct(c.observed)}</title></circle>"
            )
        parts.append(
            f'<circle cx="{pad + 10:.1f}" cy="{pad + 10 + 15 * k:.1f}" r="4" fill="{colour}"/>'
            f'<text x="{pad + 20:.1f}" y="{pad + 14 + 15 * k:.1f}">{month:g} months</text>'
        )
    return _svg(size, pad, parts, "Calibration plot")


def _km_svg(v: Validation) -> str:
    size, pad = 300.0, 48.0
    horizon = v.card.horizon_months

    def sx(m: float) -> float:
        return pad + m / horizon * size

    def sy(p: float) -> float:
        return pad + (1.0 - p) * size

    ticks = [f"{horizon * i / 4:g}" for i in range(5)]
    parts = _axes(size, pad, ticks, "months after the ablation", "recurrence", y_percent=True)
    for g, km in enumerate(v.km, start=1):
        colour = _GROUP_COLOURS[(g - 1) % len(_GROUP_COLOURS)]
        points = [(0.0, 0.0)]
        for time, s in zip(km.times, km.survival, strict=True):
            points.append((float(time), points[-1][1]))
            points.append((float(time), 1.0 - float(s)))
        points.append((min(km.last_time, horizon), points[-1][1]))
        path = " ".join(f"{sx(m):.1f},{sy(p):.1f}" for m, p in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        predicted = " ".join(
            f"{sx(float(m)):.1f},{sy(float(p)):.1f}"
            for m, p in zip(v.curve_months, v.predicted_curves[g - 1], strict=True)
        )
        parts.append(
            f'<polyline points="{predicted}" fill="none" stroke="{colour}" '
            'stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
        parts.append(
            f'<line x1="{pad + 8:.1f}" y1="{pad + 10 + 15 * (g - 1):.1f}" x2="{pad + 24:.1f}" '
            f'y2="{pad + 10 + 15 * (g - 1):.1f}" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{pad + 28:.1f}" y="{pad + 14 + 15 * (g - 1):.1f}">tertile {g}</text>'
        )
    return _svg(size, pad, parts, "Kaplan-Meier curves")


def _axes(
    size: float,
    pad: float,
    x_ticks: Sequence[str],
    x_label: str,
    y_label: str,
    y_percent: bool = True,
) -> list[str]:
    parts = [
        f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#333"/>'
    ]
    for i, tick in enumerate(x_ticks):
        x = pad + size * i / (len(x_ticks) - 1)
        parts.append(
            f'<line x1="{x:.1f}" y1="{pad + size}" x2="{x:.1f}" y2="{pad + size + 4}" stroke="#333"/>'
            f'<text x="{x:.1f}" y="{pad + size + 16}" text-anchor="middle">{html.escape(tick)}</text>'
        )
    for i in range(6):
        y = pad + size - size * i / 5
        label = f"{20 * i}%" if y_percent else f"{i / 5:g}"
        parts.append(
            f'<line x1="{pad - 4}" y1="{y:.1f}" x2="{pad}" y2="{y:.1f}" stroke="#333"/>'
            f'<text x="{pad - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>'
        )
    parts.append(
        f'<text x="{pad + size / 2}" y="{pad + size + 32}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
        f'<text transform="translate(11 {pad + size / 2}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(y_label)}</text>"
    )
    return parts


def _svg(size: float, pad: float, parts: Sequence[str], title: str) -> str:
    total = size + 2 * pad
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total:.0f}" height="{total:.0f}" '
        f'viewBox="0 0 {total:.0f} {total:.0f}" role="img" aria-label="{html.escape(title)}">'
        f"<title>{html.escape(title)}</title>" + "".join(parts) + "</svg>"
    )
