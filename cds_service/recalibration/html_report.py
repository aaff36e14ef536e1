"""The validation report as one self-contained HTML page, rendered from Jinja templates.

The page (``templates/validation_report.html``) shows the same figures as the JSON report
(:func:`.report.report_json`), one column per card, with two small inline SVG charts per card: a
calibration plot at the report months and the evaluation horizon (Kaplan-Meier observed against
mean predicted per risk group, 95% CIs, the smoothed calibration curve) and Kaplan-Meier curves per
risk group with the predicted curves dashed. Chart geometry is computed here as plain shapes; the
template draws them (``templates/_svg.html``). Autoescaping is on; no scripts or external assets,
so the file can be mailed or archived as is.

Languages: the page is said in one locale (``lang``): the template's texts through Jinja's i18n
extension with that locale's callables in the render context (:mod:`cds_service.i18n.jinja`, as
the SMART pages), the report's notes and definitions through :func:`.report.report_json` given the
locale's catalogue, and the charts' labels here. The numbers are the same in every language.
"""

from __future__ import annotations

import gettext
import math
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from cds_service.i18n import DEFAULT, Locale
from cds_service.i18n.jinja import install, template_context
from cds_service.presentation.chart import Scale, polyline, steps, ticks
from cds_service.recalibration.cohort import Cohort
from cds_service.recalibration.notes import ENGLISH, N_, catalogue, fit_mode, say
from cds_service.recalibration.report import (
    METRIC_LABELS,
    PERCENT_METRICS,
    report_json,
    say_estimate,
)

if TYPE_CHECKING:
    from cds_service.recalibration.validate import Validation

Shape = dict[str, Any]
_MONTH_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e")
_GROUP_COLOURS = ("#2c7bb6", "#abd9e9", "#fdae61", "#d7191c", "#7b3294")
SIZE, PAD = 300.0, 48.0


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("cds_service.recalibration", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    install(env)  # English until a render passes its locale's callables (template_context)
    env.filters["pct"] = _pct
    env.filters["num"] = _number
    return env


TITLE = N_("Model card validation")


def render_html(
    validations: Sequence[Validation],
    cohort: Cohort,
    title: str | None = None,
    locale: Locale = DEFAULT,
) -> str:
    """A self-contained HTML report in ``locale``: one column per card, side by side."""
    words = catalogue(locale)
    report = report_json(validations, cohort, words)  # the JSON's figures, its texts in words
    models = [
        {
            "data": data,
            "fit_mode": say(fit_mode(data["card"]["fit_mode"] or "?"), words),
            "calibration_chart": calibration_chart(v, words),
            "km_chart": km_chart(v, words),
        }
        for v, data in zip(validations, report["models"], strict=True)
    ]
    template = environment().get_template("validation_report.html")
    return template.render(
        title=title or words.gettext(TITLE),
        report=report,
        models=models,
        metric_labels={k: words.gettext(label) for k, label in METRIC_LABELS.items()},
        percent_metrics=PERCENT_METRICS,
        estimate=lambda entry, percent=False: format_estimate(entry, percent, words),
        **template_context(locale),
    )


# -- filters ------------------------------------------------------------------------------------------


def format_estimate(
    entry: dict[str, Any] | None, percent: bool = False, words: gettext.NullTranslations = ENGLISH
) -> str:
    """A JSON estimate ``{"estimate", "ci95", "note"}`` as text (never a bare "n/a")."""
    if entry is None:
        return words.gettext("not computed")
    value, ci, note = entry.get("estimate"), entry.get("ci95"), entry.get("note")
    return say_estimate(value, ci, note, percent, words, note_with_interval=False)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _number(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


# -- charts -------------------------------------------------------------------------------------------


_RISK = Scale((0.0, 1.0), (PAD + SIZE, PAD), clamp=True)  # the y axis of both charts


def _axes(
    x: Scale, x_ticks: Sequence[tuple[float, str]], x_label: str, y_label: str
) -> list[Shape]:
    shapes: list[Shape] = [
        {"kind": "rect", "x": PAD, "y": PAD, "width": SIZE, "height": SIZE, "stroke": "#333"}
    ]
    for value, label in x_ticks:
        shapes.append(_line(x(value), PAD + SIZE, x(value), PAD + SIZE + 4, "#333"))
        shapes.append(_text(x(value), PAD + SIZE + 16, label, "middle"))
    for risk in ticks(1.0, 0.2):
        y = _RISK(risk)
        shapes.append(_line(PAD - 4, y, PAD, y, "#333"))
        shapes.append(_text(PAD - 6, y + 4, f"{risk:.0%}", "end"))
    shapes.append(_text(PAD + SIZE / 2, PAD + SIZE + 32, x_label, "middle"))
    rotated = f"translate(11 {PAD + SIZE / 2:.1f}) rotate(-90)"
    shapes.append({**_text(0, 0, y_label, "middle"), "transform": rotated})
    return shapes


def _line(
    x1: float, y1: float, x2: float, y2: float, stroke: str, dash: str = "", width: float = 1
) -> Shape:
    return {
        "kind": "line",
        "x1": round(x1, 1),
        "y1": round(y1, 1),
        "x2": round(x2, 1),
        "y2": round(y2, 1),
        "stroke": stroke,
        "dash": dash,
        "width": width,
    }


def _text(x: float, y: float, text: str, anchor: str = "start") -> Shape:
    return {"kind": "text", "x": round(x, 1), "y": round(y, 1), "text": text, "anchor": anchor}


def _circle(x: float, y: float, fill: str, title: str = "") -> Shape:
    return {"kind": "circle", "cx": x, "cy": y, "r": 4, "fill": fill, "title": title}


def _polyline(
    points: Sequence[tuple[float, float]], stroke: str, dash: str = "", width: float = 2
) -> Shape:
    return {
        "kind": "polyline",
        "points": polyline(points),
        "stroke": stroke,
        "dash": dash,
        "width": width,
    }


def calibration_chart(v: Validation, words: gettext.NullTranslations = ENGLISH) -> dict[str, Any]:
    """Observed vs predicted per risk group and month, the diagonal and the smoothed curve."""
    _ = words.gettext
    sx = Scale((0.0, 1.0), (PAD, PAD + SIZE), clamp=True)
    shapes = _axes(
        sx, [(p, f"{p:.0%}") for p in ticks(1.0, 0.2)], _("predicted risk"), _("observed risk")
    )
    shapes.append(_line(sx(0), _RISK(0), sx(1), _RISK(1), "#999", "4 3"))
    if v.curve.predicted.size:
        curve = _RISK.points(sx, v.curve.predicted, v.curve.observed)
        shapes.append(_polyline(curve, "#555", width=1.5))
    for k, month in enumerate(v.months):
        colour = _MONTH_COLOURS[k % len(_MONTH_COLOURS)]
        for c in (c for c in v.calibration if c.month == month):
            if math.isnan(c.observed):
                continue
            x = sx(c.predicted)
            if not math.isnan(c.observed_low):
                shapes.append(_line(x, _RISK(c.observed_low), x, _RISK(c.observed_high), colour))
            title = _(
                "group %(group)s, %(month).4g months: predicted %(predicted).1f%%, "
                "observed %(observed).1f%%"
            ) % {
                "group": c.group,
                "month": month,
                "predicted": c.predicted * 100,
                "observed": c.observed * 100,
            }
            shapes.append(_circle(x, _RISK(c.observed), colour, title))
        shapes.append(_circle(PAD + 10, PAD + 10 + 15 * k, colour))
        label = _("%(months).4g months") % {"months": month}
        shapes.append(_text(PAD + 20, PAD + 14 + 15 * k, label))
    if v.curve.predicted.size:
        y = PAD + 10 + 15 * len(v.months)
        shapes.append(_line(PAD + 4, y, PAD + 16, y, "#555", width=1.5))
        label = _("smoothed, %(months).4g months") % {"months": v.horizon.months}
        shapes.append(_text(PAD + 20, y + 4, label))
    return {"title": _("Calibration plot"), "size": SIZE + 2 * PAD, "shapes": shapes}


def km_chart(v: Validation, words: gettext.NullTranslations = ENGLISH) -> dict[str, Any]:
    """Kaplan-Meier recurrence per risk group (solid) and mean predicted risk (dashed)."""
    _ = words.gettext
    horizon = v.card.horizon_months
    sx = Scale((0.0, horizon), (PAD, PAD + SIZE), clamp=True)
    quarters = [(m, f"{m:g}") for m in ticks(horizon, horizon / 4)]
    shapes = _axes(sx, quarters, _("months after the ablation"), _("recurrence"))
    tau = v.horizon.months
    if tau < horizon:
        shapes.append(_line(sx(tau), PAD, sx(tau), PAD + SIZE, "#999", "2 2"))
        shapes.append(_text(sx(tau) - 3, PAD + SIZE - 6, f"{tau:.4g}", "end"))
    for g, km in enumerate(v.km, start=1):
        colour = _GROUP_COLOURS[(g - 1) % len(_GROUP_COLOURS)]
        changes = zip(km.times.tolist(), (1.0 - km.survival).tolist(), strict=True)
        observed = steps((0.0, 0.0), changes, min(km.last_time, horizon))
        shapes.append(_polyline(_RISK.points(sx, *zip(*observed, strict=True)), colour))
        predicted = _RISK.points(sx, v.curve_months, v.predicted_curves[g - 1])
        shapes.append(_polyline(predicted, colour, "5 3", 1.5))
        y = PAD + 10 + 15 * (g - 1)
        shapes.append(_line(PAD + 8, y, PAD + 24, y, colour, width=2))
        shapes.append(_text(PAD + 28, y + 4, _("group %(group)s") % {"group": g}))
    return {"title": _("Kaplan-Meier curves"), "size": SIZE + 2 * PAD, "shapes": shapes}
