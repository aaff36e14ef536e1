"""The validation report as JSON (stable field names, documented in README.md) and as text.

:func:`report_json` is the one description of a report; the text and HTML renderers show the same
figures. Every number is given with its 95% interval or a note saying why it has none; JSON has
``null`` where a value is undefined (strict JSON, no NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cds_service import __version__
from cds_service.recalibration.cohort import Cohort
from cds_service.recalibration.definitions import HORIZON_CENSORING
from cds_service.recalibration.metrics import SMOOTHER, Estimate, describe, follow_up_time

if TYPE_CHECKING:
    from cds_service.recalibration.validate import Validation

SCHEMA = "hfs-cds.validation-report/1"
_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
METRIC_LABELS = {
    "harrell_c": "Harrell's C-index",
    "uno_c": "Uno's C (truncated at the horizon)",
    "calibration_slope": "Calibration slope",
    "observed_expected": "Observed / expected",
    "observed_risk": "Observed risk (Kaplan-Meier)",
    "predicted_risk": "Mean predicted risk",
}
PERCENT_METRICS = frozenset({"observed_risk", "predicted_risk"})


# -- JSON ---------------------------------------------------------------------------------------------


def report_json(validations: Sequence[Validation], cohort: Cohort) -> dict[str, Any]:
    """The whole report as a JSON-ready dict (see README "Validation report fields")."""
    first = validations[0] if validations else None
    settings: dict[str, Any] = {"interval_level": 0.95, "smoother": SMOOTHER}
    if first is not None:
        settings |= {
            "bootstrap_replicates": first.bootstrap["replicates"],
            "seed": first.bootstrap["seed"],
            "min_at_risk": first.horizon.min_at_risk,
            "risk_groups": max(v.n_groups for v in validations),
        }
    return {
        "schema": SCHEMA,
        "generated_by": f"hfs-cds {__version__}",
        "settings": settings,
        "cohort": cohort_json(cohort, first),
        "models": [model_json(v) for v in validations],
    }


def cohort_json(cohort: Cohort, v: Validation | None) -> dict[str, Any]:
    follow = follow_up_time(cohort.time_months, cohort.event)
    return {
        "source": cohort.source,
        "location": cohort.location,
        "sha256": cohort.sha256 or None,
        "patients": len(cohort),
        "recurrences": cohort.n_events,
        "left_out": len(cohort.excluded),
        "left_out_by_reason": cohort.exclusion_counts(),
        "without_ablation": cohort.not_candidates,
        "follow_up": {
            "method": "reverse Kaplan-Meier (recurrences treated as censored)",
            "median_months": follow.median.as_json(4),
            "q1_months": _num(follow.q1),
            "q3_months": _num(follow.q3),
            "longest_months": _num(follow.longest),
        },
        "definitions": {
            **cohort.definitions.as_json(),
            "administrative_censoring": HORIZON_CENSORING,
            "time_origin": "End of the index ablation; months = days / 30.4375.",
        },
        "predictors": predictors_json(cohort, v),
    }


def predictors_json(cohort: Cohort, v: Validation | None) -> dict[str, Any]:
    minutes = cohort.operation_minutes
    grades = cohort.hb_grade.astype(int)
    n = max(len(cohort), 1)
    out: dict[str, Any] = {
        "operation_minutes": {k: _num(x) for k, x in describe(minutes).items()},
        "hb_grade": {
            _ROMAN.get(int(g), str(g)): {"count": int(c), "share": _num(c / n)}
            for g, c in zip(*np.unique(grades, return_counts=True), strict=True)
        },
    }
    if v is not None:
        cut = v.card.operation_time.cut_minutes
        over = int((minutes > cut).sum())
        out["operation_over_cut"] = {"cut_minutes": cut, "count": over, "share": _num(over / n)}
    return out


def model_json(v: Validation) -> dict[str, Any]:
    h = v.horizon
    metrics: dict[str, Any] = {}
    for name, estimate in v.metrics.items():
        entry: dict[str, Any] = estimate.as_json()
        if name in v.optimism:
            entry["optimism"] = _num(v.optimism[name])
            entry["corrected"] = _num(v.corrected(name))
        elif name in ("harrell_c", "uno_c", "calibration_slope", "observed_expected"):
            entry["optimism"] = None
            entry["corrected"] = None
        metrics[name] = entry
    metrics["calibration_slope"]["wald_ci95"] = (
        [_num(v.slope_ci[0]), _num(v.slope_ci[1])] if not math.isnan(v.slope_ci[0]) else None
    )
    months = v.months
    return {
        "label": v.label,
        "card": {
            "id": v.card.id,
            "version": v.card.version,
            "sha256": v.card.sha256 or None,
            "fit_mode": str(v.card.fit.get("mode", "")) or None,
        },
        "horizon": {
            "months": _num(h.months),
            "model_horizon_months": h.model_months,
            "rule": h.rule,
            "reason": h.reason,
            "at_risk": h.at_risk,
            "at_risk_at_model_horizon": h.at_risk_at_model_horizon,
            "min_at_risk": h.min_at_risk,
        },
        "recurrences_by_horizon": v.events,
        "metrics": metrics,
        "optimism": {"applied": bool(v.optimism), "note": v.optimism_note},
        "bootstrap": v.bootstrap,
        "predicted_risk_at_horizon": {k: _num(x) for k, x in describe(v.predicted_risk).items()},
        "risk_groups": [
            {
                "group": s.group,
                "n": s.n,
                "recurrences_by_horizon": s.events,
                "predicted_risk_range": [_num(s.risk_low), _num(s.risk_high)],
                "distinct_risks": s.distinct_risks,
                "by_month": [
                    {
                        "month": _num(m),
                        "predicted": _num(v.at(s.group, m).predicted),
                        "observed": v.at(s.group, m).observed_estimate.as_json(),
                        "recurrences": v.at(s.group, m).events,
                    }
                    for m in months
                ],
            }
            for s in v.group_summary
        ],
        "not_reported": [{"month": m, "reason": reason} for m, reason in v.not_reported],
        "calibration_curve": {
            "method": "beran-kernel-kaplan-meier",
            "bandwidth_cloglog": _num(v.curve.bandwidth),
            "ici": _num(v.curve.ici),
            "note": v.curve.note or None,
            "points": [
                {"predicted": _num(p), "observed": _num(o)}
                for p, o in zip(v.curve.predicted, v.curve.observed, strict=True)
            ],
        },
        "notes": list(v.notes),
    }


def _num(value: float, digits: int = 6) -> float | None:
    value = float(value)
    return None if not math.isfinite(value) else round(value, digits)


# -- text ---------------------------------------------------------------------------------------------


def fmt(estimate: Estimate, percent: bool = False) -> str:
    """``0.71 (95% CI 0.64 to 0.78)``, or the value and why it has no interval, or why none."""

    def one(x: float) -> str:
        return f"{x * 100:.1f}%" if percent else f"{x:.2f}"

    if math.isnan(estimate.value):
        return f"not estimable ({estimate.note})"
    text = one(estimate.value)
    if estimate.has_interval:
        text += f" (95% CI {one(estimate.low)} to {one(estimate.high)})"
        if estimate.note:
            text += f" [{estimate.note}]"
    elif estimate.note:
        text += f" ({estimate.note})"
    return text


def render_text(validations: Sequence[Validation], cohort: Cohort | None = None) -> str:
    lines: list[str] = []
    if cohort is not None:
        follow = follow_up_time(cohort.time_months, cohort.event)
        lines += [
            f"cohort: {len(cohort)} patients, {cohort.n_events} recurrences; median follow-up "
            + (
                f"{follow.median.value:.2f} months"
                if not math.isnan(follow.median.value)
                else follow.median.note
            )
            + " (reverse Kaplan-Meier)",
            f"  outcome: {cohort.definitions.outcome}",
            f"  censoring: {cohort.definitions.censoring}",
        ]
    for v in validations:
        h = v.horizon
        lines.append(
            f"{v.label}  (fit: {v.card.fit.get('mode', '?')}, sha256 {v.card.sha256[:12]})"
        )
        lines.append(f"  evaluation horizon: {h.months:.2f} months ({h.reason})")
        lines.append(f"  recurrences by {h.months:.4g} months: {v.events} of {v.n}")
        for name, label in METRIC_LABELS.items():
            line = f"  {label} at {h.months:.4g} months: {fmt(v.metrics[name], name in PERCENT_METRICS)}"
            if name in v.optimism:
                line += f"; optimism {v.optimism[name]:+.3f}, corrected {v.corrected(name):.2f}"
            if name == "calibration_slope" and not math.isnan(v.slope_ci[0]):
                line += f"; Wald 95% CI {v.slope_ci[0]:.2f} to {v.slope_ci[1]:.2f}"
            lines.append(line)
        lines.append(f"  optimism: {v.optimism_note}")
        for c in v.calibration:
            lines.append(
                f"  group {c.group} by {c.month:>5.4g} months (n={c.n}, {c.events} recurrences): "
                f"predicted {c.predicted * 100:.1f}%, observed {fmt(c.observed_estimate, True)}"
            )
        for month, reason in v.not_reported:
            lines.append(f"  {month:g} months: {reason}")
        if v.curve.note:
            lines.append(f"  smoothed calibration: {v.curve.note}")
        else:
            lines.append(
                f"  smoothed calibration at {h.months:.4g} months: integrated calibration index "
                f"{v.curve.ici * 100:.1f} percentage points"
            )
        lines += [f"  note: {n}" for n in v.notes]
    return "\n".join(lines)
