"""The validation report as JSON (stable field names, documented in README.md) and as text.

:func:`report_json` is the one description of a report; the text and HTML renderers show the same
figures. Every number is given with its 95% interval or a note saying why it has none; JSON has
``null`` where a value is undefined (strict JSON, no NaN).

Languages: JSON is for machines and keeps its English texts whatever the reader's language; the
text report (and the HTML page, :mod:`.html_report`) say every label and note in the language of
the catalogue they are given (:func:`.notes.catalogue`), with the same numbers.
"""

from __future__ import annotations

import gettext
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cds_service import __version__
from cds_service.recalibration.cohort import Cohort
from cds_service.recalibration.definitions import HORIZON_CENSORING
from cds_service.recalibration.metrics import SMOOTHER, Estimate, describe, follow_up_time
from cds_service.recalibration.notes import ENGLISH, N_, fit_mode, say

if TYPE_CHECKING:
    from cds_service.recalibration.validate import Validation

SCHEMA = "hfs-cds.validation-report/1"
_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
#: The statistics in report order, with their names (msgids).
METRIC_LABELS = {
    "harrell_c": N_("Harrell's C-index"),
    "uno_c": N_("Uno's C (truncated at the horizon)"),
    "calibration_slope": N_("Calibration slope"),
    "observed_expected": N_("Observed / expected"),
    "observed_risk": N_("Observed risk (Kaplan-Meier)"),
    "predicted_risk": N_("Mean predicted risk"),
}
FOLLOW_UP_METHOD = N_("reverse Kaplan-Meier (recurrences treated as censored)")
TIME_ORIGIN = N_("End of the index ablation; months = days / 30.4375.")
PERCENT_METRICS = frozenset({"observed_risk", "predicted_risk"})


# -- JSON ---------------------------------------------------------------------------------------------


def report_json(
    validations: Sequence[Validation],
    cohort: Cohort,
    words: gettext.NullTranslations = ENGLISH,
) -> dict[str, Any]:
    """The whole report as a JSON-ready dict (see README "Validation report fields").

    Its texts are English, as the JSON report prints them; the HTML page passes its reader's
    catalogue as ``words`` to get the same dict with every text in that language.
    """
    _ = words.gettext
    first = validations[0] if validations else None
    settings: dict[str, Any] = {"interval_level": 0.95, "smoother": _(SMOOTHER)}
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
        "cohort": cohort_json(cohort, first, words),
        "models": [model_json(v, words) for v in validations],
    }


def cohort_json(
    cohort: Cohort, v: Validation | None, words: gettext.NullTranslations = ENGLISH
) -> dict[str, Any]:
    _ = words.gettext
    follow = follow_up_time(cohort.time_months, cohort.event)
    definitions = cohort.definitions.as_json()
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
            "method": _(FOLLOW_UP_METHOD),
            "median_months": follow.median.as_json(4, words),
            "q1_months": _num(follow.q1),
            "q3_months": _num(follow.q3),
            "longest_months": _num(follow.longest),
        },
        "definitions": {
            **definitions,
            "outcome": _(definitions["outcome"]),
            "censoring": _(definitions["censoring"]),
            "administrative_censoring": _(HORIZON_CENSORING),
            "time_origin": _(TIME_ORIGIN),
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


def model_json(v: Validation, words: gettext.NullTranslations = ENGLISH) -> dict[str, Any]:
    h = v.horizon
    metrics: dict[str, Any] = {}
    for name, estimate in v.metrics.items():
        entry: dict[str, Any] = estimate.as_json(words=words)
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
        "label": say(v.label, words),
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
            "reason": h.reason.say(words),
            "at_risk": h.at_risk,
            "at_risk_at_model_horizon": h.at_risk_at_model_horizon,
            "min_at_risk": h.min_at_risk,
        },
        "recurrences_by_horizon": v.events,
        "metrics": metrics,
        "optimism": {"applied": bool(v.optimism), "note": v.optimism_note.say(words)},
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
                        "observed": v.at(s.group, m).observed_estimate.as_json(words=words),
                        "recurrences": v.at(s.group, m).events,
                    }
                    for m in months
                ],
            }
            for s in v.group_summary
        ],
        "not_reported": [{"month": m, "reason": reason.say(words)} for m, reason in v.not_reported],
        "calibration_curve": {
            "method": "beran-kernel-kaplan-meier",
            "bandwidth_cloglog": _num(v.curve.bandwidth),
            "ici": _num(v.curve.ici),
            "note": v.curve.note.say(words) if v.curve.note else None,
            "points": [
                {"predicted": _num(p), "observed": _num(o)}
                for p, o in zip(v.curve.predicted, v.curve.observed, strict=True)
            ],
        },
        "notes": [n.say(words) for n in v.notes],
    }


def _num(value: float, digits: int = 6) -> float | None:
    value = float(value)
    return None if not math.isfinite(value) else round(value, digits)


# -- text ---------------------------------------------------------------------------------------------


def number(x: float, percent: bool = False) -> str:
    """``0.71``, or ``15.3%`` for a risk: the same in English and Chinese (CLDR: ``#,##0.###``
    and ``#,##0%`` with the same symbols), so a number reads alike in every report language."""
    return f"{x * 100:.1f}%" if percent else f"{x:.2f}"


def say_estimate(
    value: float | None,
    ci: Sequence[float] | None,
    note: str | None,
    percent: bool,
    words: gettext.NullTranslations,
    note_with_interval: bool = True,
) -> str:
    """``0.71 (95% CI 0.64 to 0.78)``, or the value and why it has no interval, or why none."""
    _ = words.gettext
    if value is None:
        return _("not estimable (%(note)s)") % {"note": note} if note else _("not estimable")
    text = number(value, percent)
    if ci is not None:
        low, high = (number(x, percent) for x in ci)
        if note and note_with_interval:
            template = _("%(value)s (95%% CI %(low)s to %(high)s) [%(note)s]")
        else:
            template = _("%(value)s (95%% CI %(low)s to %(high)s)")
        return template % {"value": text, "low": low, "high": high, "note": note}
    if note:
        return _("%(value)s (%(note)s)") % {"value": text, "note": note}
    return text


def fmt(
    estimate: Estimate, percent: bool = False, words: gettext.NullTranslations = ENGLISH
) -> str:
    """An estimate as text (:func:`say_estimate`), its note in the language of ``words``."""
    value = None if math.isnan(estimate.value) else estimate.value
    ci = (estimate.low, estimate.high) if estimate.has_interval else None
    note = estimate.note.say(words) if estimate.note else None
    return say_estimate(value, ci, note, percent, words)


def render_text(
    validations: Sequence[Validation],
    cohort: Cohort | None = None,
    words: gettext.NullTranslations = ENGLISH,
) -> str:
    """The report as plain text in the language of ``words`` (:func:`.notes.catalogue`)."""
    _ = words.gettext
    lines: list[str] = []
    if cohort is not None:
        follow = follow_up_time(cohort.time_months, cohort.event)
        median = follow.median
        lines += [
            _(
                "cohort: %(patients)s patients, %(recurrences)s recurrences; median follow-up "
                "%(median)s (reverse Kaplan-Meier)"
            )
            % {
                "patients": len(cohort),
                "recurrences": cohort.n_events,
                "median": _("%(months).2f months") % {"months": median.value}
                if not math.isnan(median.value)
                else (median.note.say(words) if median.note else ""),
            },
            "  " + _("outcome: %(text)s") % {"text": _(cohort.definitions.outcome)},
            "  " + _("censoring: %(text)s") % {"text": _(cohort.definitions.censoring)},
        ]
    for v in validations:
        h = v.horizon
        lines.append(
            _("%(label)s  (fit: %(mode)s, sha256 %(sha256)s)")
            % {
                "label": say(v.label, words),
                "mode": say(fit_mode(str(v.card.fit.get("mode", "?"))), words),
                "sha256": v.card.sha256[:12],
            }
        )
        at = {"months": h.months}
        lines.append(
            "  "
            + _("evaluation horizon: %(months).2f months (%(reason)s)")
            % {**at, "reason": h.reason.say(words)}
        )
        lines.append(
            "  "
            + _("recurrences by %(months).4g months: %(events)s of %(n)s")
            % {**at, "events": v.events, "n": v.n}
        )
        for name, label in METRIC_LABELS.items():
            value = fmt(v.metrics[name], name in PERCENT_METRICS, words)
            line = _("%(label)s at %(months).4g months: %(value)s") % {
                **at,
                "label": _(label),
                "value": value,
            }
            if name in v.optimism:
                line += _("; optimism %(optimism)+.3f, corrected %(corrected).2f") % {
                    "optimism": v.optimism[name],
                    "corrected": v.corrected(name),
                }
            if name == "calibration_slope" and not math.isnan(v.slope_ci[0]):
                line += _("; Wald 95%% CI %(low).2f to %(high).2f") % {
                    "low": v.slope_ci[0],
                    "high": v.slope_ci[1],
                }
            lines.append("  " + line)
        lines.append("  " + _("optimism: %(note)s") % {"note": v.optimism_note.say(words)})
        for c in v.calibration:
            lines.append(
                "  "
                + _(
                    "group %(group)s by %(month)5.4g months (n=%(n)s, %(events)s recurrences): "
                    "predicted %(predicted).1f%%, observed %(observed)s"
                )
                % {
                    "group": c.group,
                    "month": c.month,
                    "n": c.n,
                    "events": c.events,
                    "predicted": c.predicted * 100,
                    "observed": fmt(c.observed_estimate, True, words),
                }
            )
        for month, reason in v.not_reported:
            lines.append(
                "  "
                + _("%(month)g months: %(reason)s") % {"month": month, "reason": reason.say(words)}
            )
        if v.curve.note:
            lines.append(
                "  " + _("smoothed calibration: %(note)s") % {"note": v.curve.note.say(words)}
            )
        else:
            lines.append(
                "  "
                + _(
                    "smoothed calibration at %(months).4g months: integrated calibration index "
                    "%(ici).1f percentage points"
                )
                % {**at, "ici": v.curve.ici * 100}
            )
        lines += ["  " + _("note: %(note)s") % {"note": n.say(words)} for n in v.notes]
    return "\n".join(lines)
