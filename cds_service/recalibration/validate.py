"""Validate model cards on a cohort: discrimination and calibration at a named horizon, with intervals.

For each card, on the same cohort, at the evaluation horizon (:func:`.metrics.evaluation_horizon`;
follow-up beyond it is censored there): Harrell's and Uno's C, the calibration slope (the
coefficient of the linear predictor in a Cox model refitted on the cohort: 1 is ideal, below 1
means predictions are too extreme), observed / expected, calibration by risk group at each report
month and a smoothed calibration curve (the estimators are in :mod:`.metrics`), with seeded
bootstrap intervals (:mod:`.bootstrap`). A ``slope`` or ``full`` card validated on the very cohort
it was refitted on (its ``fit.input.sha256`` equals the cohort's) gets Harrell's optimism
correction: the same refit on every resample.

Rendering lives in :mod:`.report` (JSON and text) and :mod:`.html_report` (Jinja templates).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cds_service.model import ModelCard, RecurrenceModel
from cds_service.model.engine import FloatArray
from cds_service.recalibration.bootstrap import (
    DEFAULT_REPLICATES,
    DEFAULT_SEED,
    Bootstrap,
    Optimism,
)
from cds_service.recalibration.cohort import Cohort
from cds_service.recalibration.coxph import CoxPH
from cds_service.recalibration.errors import CohortError, RecalibrationError
from cds_service.recalibration.fit import FitOptions, recalibrate
from cds_service.recalibration.metrics import (
    CalibrationCurve,
    Estimate,
    Horizon,
    KaplanMeier,
    evaluation_horizon,
    harrell_c,
    kaplan_meier,
    risk_groups,
    smoothed_calibration,
    uno_c,
)
from cds_service.recalibration.notes import Note, fit_mode

#: The statistics with bootstrap intervals, in report order.
METRICS = ("harrell_c", "uno_c", "calibration_slope", "observed_expected", "predicted_risk")
#: Those Harrell's optimism correction applies to.
OPTIMISM_METRICS = ("harrell_c", "uno_c", "calibration_slope", "observed_expected")


@dataclass(frozen=True, slots=True)
class ValidationOptions:
    """Settings of a validation run (the CLI exposes each)."""

    replicates: int = DEFAULT_REPLICATES  # 0: no bootstrap (intervals say so)
    seed: int = DEFAULT_SEED
    min_at_risk: int = 10
    groups: int = 3
    curve_points: int = 25
    #: Optimism correction: None = when the card was refitted on this cohort (checksum match).
    optimism: bool | None = None


@dataclass(frozen=True, slots=True)
class GroupCalibration:
    """One risk group at one month: mean predicted risk against Kaplan-Meier observed risk."""

    group: int  # 1 = lowest predicted risk
    month: float
    n: int
    events: int  # recurrences in the group by this month
    predicted: float
    observed: float  # NaN when undefined (``note`` says why)
    observed_low: float  # NaN when the interval is undefined (``note`` says why)
    observed_high: float
    note: Note | None = None

    @property
    def observed_estimate(self) -> Estimate:
        return Estimate(
            self.observed,
            self.observed_low,
            self.observed_high,
            "log-log Greenwood" if not math.isnan(self.observed_low) else "",
            self.note,
        )


@dataclass(frozen=True, slots=True)
class GroupSummary:
    group: int
    n: int
    events: int  # by the horizon
    risk_low: float  # lowest and highest predicted risk at the horizon in the group
    risk_high: float
    distinct_risks: int


@dataclass(frozen=True)
class Validation:
    """Everything the report shows for one card on one cohort."""

    card: ModelCard
    label: Note | str  # a card label note (commands._label), or the caller's own text
    n: int
    events: int  # recurrences by the evaluation horizon
    horizon: Horizon
    c_index: float  # Harrell's, apparent
    slope: float
    slope_ci: tuple[float, float]  # Wald
    observed_horizon: float
    predicted_horizon: float
    metrics: dict[str, Estimate]  # METRICS plus "observed_risk"
    optimism: dict[str, float]  # per OPTIMISM_METRICS, when applied
    optimism_note: Note
    bootstrap: dict[str, Any]  # replicates, seed, failed per statistic, seconds
    calibration: tuple[GroupCalibration, ...]
    group_summary: tuple[GroupSummary, ...]
    not_reported: tuple[tuple[float, Note], ...]  # report months beyond the horizon, and why
    groups: NDArray[np.intp]  # risk group of each patient (1 = lowest)
    km: tuple[KaplanMeier, ...]  # one per group
    curve_months: FloatArray
    predicted_curves: FloatArray  # (group, month): mean predicted risk
    curve: CalibrationCurve
    predicted_risk: FloatArray  # each patient's predicted risk at the horizon
    notes: tuple[Note, ...] = ()

    @property
    def observed_expected(self) -> float:
        return (
            self.observed_horizon / self.predicted_horizon if self.predicted_horizon else math.nan
        )

    @property
    def n_groups(self) -> int:
        return len(self.group_summary)

    @property
    def months(self) -> tuple[float, ...]:
        return tuple(sorted({c.month for c in self.calibration}))

    def at(self, group: int, month: float) -> GroupCalibration:
        for c in self.calibration:
            if c.group == group and c.month == month:
                return c
        raise KeyError((group, month))

    def corrected(self, metric: str) -> float:
        """Apparent minus optimism (NaN when no correction was made)."""
        if metric not in self.optimism:
            return math.nan
        return self.metrics[metric].value - self.optimism[metric]


# -- performance on one set of patients ---------------------------------------------------------------


def performance(
    lp: FloatArray, risk: FloatArray, t: FloatArray, e: FloatArray, horizon: float
) -> dict[str, float]:
    """The bootstrapped statistics; NaN where undefined on these patients."""
    out = {
        "harrell_c": harrell_c(t, e, lp),
        "uno_c": uno_c(t, e, lp, horizon),
        "predicted_risk": float(risk.mean()),
    }
    try:
        out["calibration_slope"] = float(CoxPH().fit(lp[:, None], t, e).params_[0])
    except RecalibrationError:
        out["calibration_slope"] = math.nan
    observed = 1.0 - kaplan_meier(t, e).at(horizon)[0]
    out["observed_expected"] = (
        observed / out["predicted_risk"] if out["predicted_risk"] else math.nan
    )
    return out


# -- validation ---------------------------------------------------------------------------------------


def validate(
    card: ModelCard,
    cohort: Cohort,
    label: Note | str | None = None,
    options: ValidationOptions | None = None,
) -> Validation:
    """Discrimination and calibration of ``card`` on ``cohort`` at the evaluation horizon."""
    opts = options or ValidationOptions()
    n = len(cohort)
    if n < opts.groups * 2:
        raise CohortError(f"{n} patients are too few to validate (at least {opts.groups * 2})")
    raw_t = cohort.time_months
    horizon = evaluation_horizon(raw_t, card.horizon_months, opts.min_at_risk)
    tau = horizon.months
    if not tau > 0:
        raise CohortError(
            f"the evaluation horizon is {tau:g} months: at least {opts.min_at_risk} patients "
            "need follow-up beyond the ablation"
        )
    t = np.minimum(raw_t, tau)
    e = ((cohort.event == 1) & (raw_t <= tau)).astype(np.float64)
    model = RecurrenceModel(card)
    minutes, grades = cohort.operation_minutes, cohort.hb_grade
    try:
        lp = model.relative_log_hazard(minutes, grades)
    except ValueError as exc:
        raise CohortError(f"{card.label} cannot score this cohort: {exc}") from exc
    risk_tau = model.predict_risk(minutes, grades, tau)
    notes: list[Note] = []

    # Groups by distinct predicted risk; calibration at report months up to the horizon.
    groups = risk_groups(lp, opts.groups)
    n_groups = int(groups.max())
    if n_groups < opts.groups:
        notes.append(Note.of("fewer-groups", found=n_groups, wanted=opts.groups))
    months = sorted({float(m) for m in card.report_months if m <= tau} | {tau})
    not_reported = tuple(
        (
            float(m),
            Note.of(
                "month-not-reported",
                followed=int((raw_t >= m).sum()),
                month=float(m),
                min_at_risk=opts.min_at_risk,
                horizon=tau,
            ),
        )
        for m in card.report_months
        if m > tau
    )
    risks = model.predict_risk(minutes, grades, np.array(months))
    calibration: list[GroupCalibration] = []
    kms: list[KaplanMeier] = []
    summaries: list[GroupSummary] = []
    for g in range(1, n_groups + 1):
        mask = groups == g
        km = kaplan_meier(t[mask], e[mask])
        kms.append(km)
        for k, month in enumerate(months):
            observed = km.risk(month)
            calibration.append(
                GroupCalibration(
                    group=g,
                    month=month,
                    n=int(mask.sum()),
                    events=int(((t <= month) & (e == 1) & mask).sum()),
                    predicted=float(risks[mask, k].mean()),
                    observed=observed.value,
                    observed_low=observed.low,
                    observed_high=observed.high,
                    note=observed.note,
                )
            )
        summaries.append(
            GroupSummary(
                group=g,
                n=int(mask.sum()),
                events=int(e[mask].sum()),
                risk_low=float(risk_tau[mask].min()),
                risk_high=float(risk_tau[mask].max()),
                distinct_risks=len(np.unique(lp[mask])),
            )
        )

    # Apparent performance, the slope's Wald interval, and the bootstrap.
    apparent = performance(lp, risk_tau, t, e, tau)
    slope_ci = (math.nan, math.nan)
    try:
        wald = CoxPH().fit(lp[:, None], t, e, names=["linear predictor"])
        low, high = wald.confidence_intervals_[0]
        slope_ci = (float(low), float(high))
    except RecalibrationError as exc:
        notes.append(Note.of("slope-not-estimable", error=str(exc)))
    metrics, bootstrap_info = _estimates(apparent, opts, lp, risk_tau, t, e, tau)
    metrics["observed_risk"] = kaplan_meier(t, e).risk(tau)
    optimism, optimism_note = _optimism(card, cohort, opts, tau, t, e)
    if "seconds" in optimism:
        bootstrap_info["optimism_seconds"] = optimism.pop("seconds")
        bootstrap_info["optimism_refit_failures"] = int(optimism.pop("refit_failures"))

    curve_months = np.linspace(0.0, card.horizon_months, 49)
    mean_curves = np.zeros((n_groups, curve_months.size))
    curve_risk = model.predict_risk(minutes, grades, curve_months[1:])
    for g in range(1, n_groups + 1):
        mean_curves[g - 1, 1:] = curve_risk[groups == g].mean(axis=0)
    return Validation(
        card=card,
        label=label or f"{card.id} {card.version}",
        n=n,
        events=int(e.sum()),
        horizon=horizon,
        c_index=apparent["harrell_c"],
        slope=apparent["calibration_slope"],
        slope_ci=slope_ci,
        observed_horizon=1.0 - kaplan_meier(t, e).at(tau)[0],
        predicted_horizon=float(risk_tau.mean()),
        metrics=metrics,
        optimism=optimism,
        optimism_note=optimism_note,
        bootstrap=bootstrap_info,
        calibration=tuple(calibration),
        group_summary=tuple(summaries),
        not_reported=not_reported,
        groups=groups,
        km=tuple(kms),
        curve_months=curve_months,
        predicted_curves=mean_curves,
        curve=smoothed_calibration(risk_tau, t, e, tau, points=opts.curve_points),
        predicted_risk=risk_tau,
        notes=tuple(notes),
    )


def _estimates(
    apparent: dict[str, float],
    opts: ValidationOptions,
    lp: FloatArray,
    risk: FloatArray,
    t: FloatArray,
    e: FloatArray,
    tau: float,
) -> tuple[dict[str, Estimate], dict[str, Any]]:
    """Apparent values with bootstrap percentile intervals (or the reason there are none)."""
    out: dict[str, Estimate] = {}
    undefined = {
        "harrell_c": Note.of("no-usable-pair"),
        "uno_c": Note.of("no-usable-pair"),
        "calibration_slope": Note.of("slope-undefined"),
        "observed_expected": Note.of("no-predicted-risk"),
        "predicted_risk": Note.of("no-patient"),
    }
    if opts.replicates < 1:
        for k in METRICS:
            value = apparent[k]
            out[k] = Estimate(
                value,
                note=Note.of("bootstrap-off") if not math.isnan(value) else undefined[k],
            )
        return out, {"replicates": 0, "seed": opts.seed, "failed": {}, "seconds": 0.0}
    boot = Bootstrap(opts.replicates, opts.seed).fit(
        len(t), lambda idx: performance(lp[idx], risk[idx], t[idx], e[idx], tau)
    )
    for k in METRICS:
        value = apparent[k]
        if math.isnan(value):
            out[k] = Estimate(math.nan, note=undefined[k])
            continue
        failed = boot.failed_.get(k, 0)
        note = (
            Note.of("resamples-undefined", failed=failed, replicates=opts.replicates)
            if failed
            else None
        )
        if k in boot.intervals_:
            lo, hi = boot.intervals_[k]
            out[k] = Estimate(
                value, lo, hi, f"bootstrap percentile, {opts.replicates} resamples", note
            )
        else:
            why = note or Note.of("too-few-resamples")
            out[k] = Estimate(value, note=Note.of("interval-undefined", why=why))
    return out, {
        "replicates": opts.replicates,
        "seed": opts.seed,
        "failed": {k: v for k, v in boot.failed_.items() if v},
        "seconds": round(boot.seconds_, 3),
    }


# -- optimism -----------------------------------------------------------------------------------------


def _optimism(
    card: ModelCard,
    cohort: Cohort,
    opts: ValidationOptions,
    tau: float,
    t: FloatArray,
    e: FloatArray,
) -> tuple[dict[str, float], Note]:
    mode = str(card.fit.get("mode", ""))
    fitted_on = str((card.fit.get("input") or {}).get("sha256", ""))
    same_data = bool(cohort.sha256) and fitted_on == cohort.sha256
    wanted = opts.optimism if opts.optimism is not None else same_data
    if mode not in ("slope", "full"):
        if not mode:
            return {}, Note.of("optimism-not-applicable-unknown")
        return {}, Note.of("optimism-not-applicable", mode=fit_mode(mode))
    if not wanted:
        return {}, Note.of("optimism-other-cohort")
    if opts.replicates < 1:
        return {}, Note.of("optimism-bootstrap-off")
    base = _source_card(card)
    x = cohort.covariates(card)
    ref = np.array([card.reference_x1, card.reference_x2])
    lenient = FitOptions(
        min_patients=2, min_events=1, min_events_per_coefficient=0.0, allow_short_follow_up=True
    )
    rows = cohort.rows

    def refit(idx: NDArray[np.intp]) -> tuple[FloatArray, FloatArray]:
        sample = Cohort(tuple(rows[i] for i in idx))
        rec = recalibrate(sample, base, mode, lenient)  # type: ignore[arg-type]
        lp: FloatArray = (x - ref) @ np.array(rec.params)
        months = np.array([m for m, _ in rec.knots])
        cumhaz = -np.log([s for _, s in rec.knots])
        risk: FloatArray = -np.expm1(-float(np.interp(tau, months, cumhaz)) * np.exp(lp))
        return lp, risk

    def evaluate(pred: tuple[FloatArray, FloatArray], idx: NDArray[np.intp]) -> dict[str, float]:
        lp, risk = pred
        return performance(lp[idx], risk[idx], t[idx], e[idx], tau)

    result = Optimism[tuple[FloatArray, FloatArray]](opts.replicates, opts.seed).fit(
        len(rows), refit, evaluate
    )
    optimism = {k: v for k, v in result.optimism_.items() if k in OPTIMISM_METRICS}
    note = (
        Note.of(
            "optimism-applied-failures",
            mode=fit_mode(mode),
            replicates=opts.replicates,
            failures=result.refit_failures_,
        )
        if result.refit_failures_
        else Note.of("optimism-applied", mode=fit_mode(mode), replicates=opts.replicates)
    )
    return {
        **optimism,
        "seconds": round(result.seconds_, 3),
        "refit_failures": float(result.refit_failures_),
    }, note


def _source_card(card: ModelCard) -> ModelCard:
    """The card a slope refit started from: its source coefficients, recorded in ``fit``."""
    coefficients = card.fit.get("coefficients") or {}
    x1 = (coefficients.get("operation_time") or {}).get("source_card_coefficient")
    x2 = (coefficients.get("hb_grade") or {}).get("source_card_coefficient")
    if not isinstance(x1, int | float) or not isinstance(x2, int | float):
        return card
    return dataclasses.replace(
        card,
        operation_time=dataclasses.replace(card.operation_time, coefficient=float(x1)),
        hb_grade=dataclasses.replace(card.hb_grade, coefficient=float(x2)),
    )


# Rendering, for the commands (imported last: the renderers only need Validation's attributes).
from cds_service.recalibration.html_report import render_html as render_html  # noqa: E402
from cds_service.recalibration.report import render_text as render_text  # noqa: E402
