"""Write a recalibrated model card: the source card's JSON with a local baseline (and coefficients).

The new card keeps everything the fit did not change and records in ``fit`` what the fit did, on
which data (counts, patients left out by reason, dates, the input's SHA-256, the outcome and
censoring definitions) and, in ``slope`` and ``full`` mode, the estimates with the 2x2 coefficient
covariance so a presentation layer can show a delta-method interval. No patient identifier is
written. :func:`write_card` validates the card with the service's own parser before writing it
atomically, so the file it leaves behind always loads via ``CDS_MODEL_CARD``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from cds_service import __version__
from cds_service.model import ModelCard, ModelCardError, load_model_card, parse_model_card
from cds_service.model.card import DEFAULT_MODEL_CARD
from cds_service.recalibration.errors import RecalibrationError
from cds_service.recalibration.fit import Recalibration

CardJson = dict[str, Any]

_BASELINE_ASSUMPTION_PREFIX = "The baseline hazard was not published"
_RECALIBRATE_LIMITATION = "Recalibrate on local patients before clinical use."


def read_card_json(path: str | Path | None = None) -> tuple[ModelCard, CardJson]:
    """A model card both validated and as raw JSON (``None``: the packaged published card)."""
    card = load_model_card(path)
    if path is None:
        raw = (
            resources.files("cds_service.model") / "model_cards" / DEFAULT_MODEL_CARD
        ).read_bytes()
    else:
        raw = Path(path).read_bytes()
    return card, json.loads(raw)


def build_card(
    rec: Recalibration,
    source: CardJson,
    *,
    fitted_at: datetime | None = None,
    version: str | None = None,
) -> CardJson:
    """The recalibrated card as JSON, from the source card's JSON and the fit."""
    when = (fitted_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    card = rec.card
    cohort = rec.cohort
    data = copy.deepcopy(source)
    data["id"] = card.id if card.id.endswith("-local") else f"{card.id}-local"
    data["version"] = version or f"{card.version.split('+')[0]}+local.{rec.mode}.{when:%Y%m%d}"
    if "recalibrated" not in card.title:
        data["title"] = f"{card.title}, recalibrated on local patients ({rec.mode})"
    dates = cohort.date_range()
    who = (
        f"{rec.n} local patients ({rec.events} recurrences within {card.horizon_months:g} months"
        + (f", ablations {dates['first_procedure']} to {dates['last_procedure']}" if dates else "")
        + ")"
    )

    # Coefficients
    names = ("operation_time", "hb_grade")
    published = rec.source_params
    coefficients: dict[str, Any] = {}
    slope_record: dict[str, Any] = {}
    if rec.mode == "slope":
        cox = rec.cox
        assert cox is not None
        slope, slope_se = float(cox.params_[0]), float(cox.standard_errors_[0])
        for j, name in enumerate(names):
            lo, hi = sorted(float(v) * published[j] for v in cox.confidence_intervals_[0])
            data["covariates"][name]["coefficient"] = _num(rec.params[j])
            data["covariates"][name]["basis"] = (
                f"coefficient: source card {published[j]:g} times the calibration slope "
                f"{slope:.4g} fitted on {who} by Efron partial likelihood; coding and cut "
                "unchanged from the source card"
            )
            se = slope_se * abs(published[j])
            coefficients[name] = _coefficient(rec.params[j], se, lo, hi, published[j])
        s_lo, s_hi = (float(v) for v in cox.confidence_intervals_[0])
        slope_record |= {
            "estimate": _num(slope),
            "se": _num(slope_se),
            "ci95": [_num(s_lo), _num(s_hi)],
            "z": _num(float(cox.z_[0])),
            "p": _num(float(cox.p_values_[0])),
            "covariate": "source card linear predictor x @ b (no offset)",
        }
    elif rec.mode == "full":
        cox = rec.cox
        assert cox is not None
        for j, name in enumerate(names):
            estimate = float(cox.params_[j])
            cov = data["covariates"][name]
            cov["coefficient"] = _num(estimate)
            cov["basis"] = (
                f"coefficient: fitted on {who} by Efron partial likelihood (source card: "
                f"{published[j]:g}); coding and cut unchanged from the source card"
            )
            lo, hi = (float(v) for v in cox.confidence_intervals_[j])
            se = float(cox.standard_errors_[j])
            z, p = _num(float(cox.z_[j])), _num(float(cox.p_values_[j]))
            coefficients[name] = _coefficient(estimate, se, lo, hi, published[j], z=z, p=p)
    else:
        for j, name in enumerate(names):
            coefficients[name] = {"estimate": published[j], "source": "source card (kept)"}
    fitted = {
        "baseline": "source card",
        "slope": "calibration slope on the source card's linear predictor",
        "full": "locally fitted",
    }[rec.mode]

    # Baseline
    knots_text = (
        f"{len(rec.knots) - 2} knots at recurrence times thinned to even ranks"
        if rec.knots_thinned
        else "a knot at each distinct recurrence time"
    )
    extension = (
        f"; beyond the last follow-up at {rec.extrapolated_after_months:.2f} months extended to "
        f"{card.horizon_months:g} months at the average hazard of the second half of follow-up"
        if rec.extrapolated_after_months is not None
        else ""
    )
    data["baseline"] = {
        "method": "breslow-local",
        "interpolation": "linear-cumulative-hazard",
        "knots": [{"month": _month(m), "survival": s} for m, s in rec.knots],
        "basis": (
            f"Breslow estimate on {who}, with the "
            f"{fitted} coefficients, for the "
            f"reference patient (X1 = {card.reference_x1:g}, X2 = {card.reference_x2:g}); "
            f"{knots_text} up to {card.horizon_months:g} months{extension}; linear cumulative "
            "hazard between knots"
        ),
    }

    # Fit record
    fit: dict[str, Any] = {
        "mode": rec.mode,
        "source": "local-cohort",
        "note": {
            "baseline": "Baseline hazard re-estimated on local patients; coefficients kept from "
            "the source card.",
            "slope": "Recalibration in the large and slope: one coefficient on the source card's "
            "linear predictor and the baseline hazard fitted on local patients.",
            "full": "Coefficients and baseline hazard fitted on local patients.",
        }[rec.mode],
        "fitted_at": when.isoformat().replace("+00:00", "Z"),
        "software": f"hfs-cds {__version__} (cds_service.recalibration)",
        "source_card": {"id": card.id, "version": card.version, "sha256": card.sha256},
        "input": {"kind": cohort.source, "location": cohort.location, "sha256": cohort.sha256},
        "cohort": {
            "patients": rec.n,
            "recurrences": rec.events,
            "left_out": len(cohort.excluded),
            "left_out_by_reason": cohort.exclusion_counts(),
            "without_ablation": cohort.not_candidates,
            "max_follow_up_months": _num(rec.max_follow_up_months),
            "at_risk_at_horizon": rec.at_risk_at_horizon,
            "administrative_censoring_months": card.horizon_months,
        },
        "definitions": {
            **cohort.definitions.as_json(),
            "administrative_censoring": f"Follow-up beyond {card.horizon_months:g} months is "
            "censored there.",
            "time_origin": f"End of the index ablation; a month is {card.days_per_month:g} days.",
        },
        "baseline": {
            "estimator": "breslow",
            "reference_patient": {"x1": card.reference_x1, "x2": card.reference_x2},
            "knots": len(rec.knots),
            "thinned": rec.knots_thinned,
        },
        "coefficients": coefficients,
    }
    if dates:
        fit["cohort"]["date_range"] = dates
    if rec.extrapolated_after_months is not None:
        fit["baseline"]["extrapolated_after_months"] = _num(rec.extrapolated_after_months)
    if rec.mode in ("slope", "full"):
        cox = rec.cox
        covariance = rec.covariance
        assert cox is not None and covariance is not None
        lr = cox.log_likelihood_ratio_test_
        if rec.mode == "slope":
            fit["slope"] = slope_record
        fit.update(
            {
                "ties": "efron",
                "log_likelihood": _num(cox.log_likelihood_),
                "log_likelihood_null": _num(cox.log_likelihood_null_),
                "lr_test": {
                    "statistic": _num(lr.statistic),
                    "df": lr.degrees_of_freedom,
                    "p": _num(lr.p_value),
                },
                "iterations": cox.n_iterations_,
                "covariance": [[_num(float(v)) for v in row] for row in covariance],
                "covariance_order": list(names),
            }
        )
    if rec.warnings:
        fit["warnings"] = [str(w) for w in rec.warnings]  # English, as the card's other texts
    data["fit"] = fit
    site = cohort.location or cohort.source
    data["caveat"] = (
        f"Recalibrated on {rec.n} local patients ({site}); informational only; see assumptions "
        "and limitations."
    )

    # What clinicians read on every card
    local = {
        "baseline": f"Recalibrated on {who}: the baseline hazard was re-estimated locally; the "
        "published coefficients are kept.",
        "slope": f"Recalibrated on {who}: the baseline hazard and one calibration slope on the "
        "published linear predictor were re-estimated locally (both coefficients scaled by it).",
        "full": f"Recalibrated on {who}: the baseline hazard and both coefficients were "
        "re-estimated locally.",
    }[rec.mode]
    assumptions = [a for a in data["assumptions"] if not a.startswith(_BASELINE_ASSUMPTION_PREFIX)]
    assumptions.insert(0, local)
    if rec.extrapolated_after_months is not None:
        assumptions.append(
            f"Local follow-up ends at {rec.extrapolated_after_months:.1f} months; risks beyond "
            "assume the hazard stays at its recent average."
        )
    data["assumptions"] = assumptions
    data["limitations"] = [
        (
            "Recalibrated locally; check the validation report (hfs-cds validate) before "
            "clinical use."
            if text == _RECALIBRATE_LIMITATION
            else text
        )
        for text in data["limitations"]
    ]
    # The texts rewritten above exist in English only: a translation of the published card's
    # versions would now say something else, so it goes (English is shown in its place, and the
    # service names the untranslated texts at start-up).
    for texts in (data.get("translations") or {}).values():
        if isinstance(texts, dict):
            for key in ("caveat", "assumptions", "limitations"):
                texts.pop(key, None)
    return data


def write_card(data: CardJson, path: str | Path) -> ModelCard:
    """Validate ``data`` as the service would, write it atomically, and load it back."""
    try:
        parse_model_card(data)
    except ModelCardError as exc:  # a bug here, never the user's: say so plainly
        raise RecalibrationError(f"the recalibrated card would not load: {exc}") from exc
    target = Path(path)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise RecalibrationError(f"cannot write {target}: {exc.strerror}") from exc
    return load_model_card(target)


def _coefficient(
    estimate: float, se: float, low: float, high: float, source: float, **test: float
) -> dict[str, Any]:
    """One coefficient of ``fit.coefficients``: the estimate, its interval and hazard ratio."""
    return {
        "estimate": _num(estimate),
        "se": _num(se),
        "ci95": [_num(low), _num(high)],
        "hazard_ratio": _num(math.exp(estimate)),
        "hazard_ratio_ci95": [_num(math.exp(low)), _num(math.exp(high))],
        **test,
        "source_card_coefficient": source,
    }


def _num(value: float) -> float:
    """A float for JSON, rounded to 10 significant digits (finite values only)."""
    if not math.isfinite(value):
        raise RecalibrationError(f"non-finite value {value!r} in the fit")
    return float(f"{value:.10g}")


def _month(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
