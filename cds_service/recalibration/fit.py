"""Recalibrate the model card on a local cohort: the baseline only, a slope, or the whole model.

* ``baseline``: keep the card's coefficients; estimate the cumulative baseline hazard on the local
  cohort with Breslow's estimator.
* ``slope`` (recalibration in the large plus slope, one degree of freedom): fit one coefficient
  ``s`` on the card's linear predictor ``lp = x @ b`` by Efron partial likelihood; the new
  coefficients are ``s * b`` (the card's relative weights kept, their strength shrunk or
  stretched), then the Breslow baseline at them. The coefficient covariance is
  ``var(s) * b b^T`` (rank one).
* ``full``: fit both coefficients by Efron partial likelihood (:class:`CoxPH`), then the Breslow
  baseline at the fitted coefficients.

Either way the baseline is expressed for the card's reference patient, which the engine anchors
on: ``H_ref(t) = H0(t) * exp(lp_ref)`` with ``lp_ref`` from the card's ``reference_patient``
(computed directly as Breslow's estimator at that covariate vector).

Rules (documented in the card the fit writes):

* **Coding**: X1 = operation time over the card's cut (0/1), X2 = HB grade (1-3), as the engine
  scores them.
* **Administrative censoring at the horizon**: follow-up beyond ``horizon_months`` is censored
  there. The model makes no claim past its horizon, and the baseline up to the horizon does not
  depend on what happens later.
* **Knots**: one at month 0 (survival 1), one at each distinct recurrence time up to the horizon
  (where the piecewise-linear curve the engine interpolates equals Breslow's estimate exactly), and
  one at the horizon. More than ``max_knots`` recurrence times are thinned to evenly spaced ranks,
  always keeping the last; the curve still passes through the estimate at every kept knot.
* **Follow-up must reach the horizon**: if no patient is followed to ``horizon_months`` the
  baseline there is unknown and the fit fails, unless ``allow_short_follow_up`` is set: then the
  cumulative hazard is extended from the last follow-up time to the horizon at a constant hazard
  equal to its average over the second half of the observed follow-up (recorded in the card).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cds_service.model import ModelCard
from cds_service.model.engine import FloatArray
from cds_service.recalibration.cohort import Cohort
from cds_service.recalibration.coxph import CoxPH, breslow
from cds_service.recalibration.errors import CohortError
from cds_service.recalibration.notes import N_, Note

FitMode = Literal["baseline", "slope", "full"]
FIT_MODES: tuple[FitMode, ...] = ("baseline", "slope", "full")

# Coefficient names: English in the card (msgids: ``hfs-cds fit --lang`` prints them translated).
COVARIATE_NAMES = (N_("operation time over the cut (X1)"), N_("House-Brackmann grade (X2)"))
SLOPE_NAME = N_("source card linear predictor")


@dataclass(frozen=True, slots=True)
class FitOptions:
    """Guards and choices for a recalibration (the CLI exposes each as an option)."""

    min_patients: int = 20
    min_events: int = 5
    #: Full refit only: recurrences needed per estimated coefficient (the usual rule of 10).
    min_events_per_coefficient: float = 10.0
    allow_short_follow_up: bool = False
    max_knots: int = 200


@dataclass(frozen=True)
class Recalibration:
    """The result of :func:`recalibrate`: coefficients, reference-patient knots, cohort summary."""

    mode: FitMode
    card: ModelCard  # the card recalibrated (coding, reference patient, horizon)
    cohort: Cohort
    params: tuple[float, float]  # X1, X2 coefficients used for the baseline
    cox: CoxPH | None  # full: the 2-coefficient refit; slope: the fit on the card's lp; else None
    knots: tuple[tuple[float, float], ...]  # (month, survival of the reference patient)
    n: int
    events: int  # recurrences up to the horizon
    max_follow_up_months: float  # after administrative censoring at the horizon
    at_risk_at_horizon: int  # patients followed recurrence-free to the horizon
    knots_thinned: bool
    extrapolated_after_months: float | None
    warnings: tuple[Note, ...] = field(default=())  # the card keeps them in English

    @property
    def source_params(self) -> tuple[float, float]:
        return (self.card.operation_time.coefficient, self.card.hb_grade.coefficient)

    @property
    def covariance(self) -> FloatArray | None:
        """2x2 covariance of (X1, X2) coefficients; rank one ``var(s) b b^T`` in slope mode."""
        if self.cox is None:
            return None
        if self.mode == "slope":
            b = np.array(self.source_params)
            out: FloatArray = float(self.cox.variance_matrix_[0, 0]) * np.outer(b, b)
            return out
        return self.cox.variance_matrix_


def recalibrate(
    cohort: Cohort, card: ModelCard, mode: FitMode, options: FitOptions | None = None
) -> Recalibration:
    """Fit the baseline (and in ``full`` mode the coefficients) on ``cohort``."""
    opts = options or FitOptions()
    horizon = card.horizon_months
    n = len(cohort)
    if n < opts.min_patients:
        raise CohortError(
            f"{n} patient(s) in the cohort are too few to recalibrate (at least "
            f"{opts.min_patients} needed){_left_out_hint(cohort)}"
        )
    raw_t = cohort.time_months
    t = np.minimum(raw_t, horizon)
    e = (cohort.event == 1) & (raw_t <= horizon)
    events = int(e.sum())
    if events == 0:
        raise CohortError(
            f"no recurrences within {horizon:g} months among {n} patients: every patient is "
            "censored, so the baseline hazard cannot be estimated"
        )
    if events < opts.min_events:
        raise CohortError(
            f"{events} recurrence(s) within {horizon:g} months are too few to recalibrate (at "
            f"least {opts.min_events} needed)"
        )
    x = cohort.covariates(card)
    cox: CoxPH | None = None
    params = (card.operation_time.coefficient, card.hb_grade.coefficient)
    if mode in ("full", "slope"):
        # full: both coefficients; slope: one coefficient on the card's linear predictor.
        full = mode == "full"
        covariates = x if full else (x @ np.array(params))[:, None]
        needed = math.ceil(opts.min_events_per_coefficient * covariates.shape[1])
        if events < needed:
            what = f"refit {x.shape[1]} coefficients" if full else "fit a calibration slope"
            raise CohortError(
                f"{events} recurrences are too few to {what} (at least {needed}: "
                f"{opts.min_events_per_coefficient:g} per coefficient); recalibrate the baseline "
                "only (--mode baseline)"
            )
        try:
            cox = CoxPH().fit(covariates, t, e, names=COVARIATE_NAMES if full else [SLOPE_NAME])
        except CohortError as exc:
            raise CohortError(f"{exc}; recalibrate the baseline only (--mode baseline)") from exc
        fitted = cox.params_ if full else float(cox.params_[0]) * np.array(params)
        params = (float(fitted[0]), float(fitted[1]))
    elif mode != "baseline":
        raise ValueError(f"unknown fit mode {mode!r}")

    reference = np.array([card.reference_x1, card.reference_x2])
    times, cumhaz = breslow(x, t, e, params, at=reference)
    max_follow = float(t.max())
    at_risk = int((raw_t >= horizon).sum())
    warnings: list[Note] = []
    extrapolated_after: float | None = None
    if max_follow < horizon:
        if not opts.allow_short_follow_up:
            raise CohortError(
                f"local follow-up ends at {max_follow:.2f} months, before the model's "
                f"{horizon:g}-month horizon, so the baseline up to {horizon:g} months cannot be "
                "estimated; collect longer follow-up, or allow a constant-hazard extension "
                "(--allow-short-follow-up; recorded in the card)"
            )
        extrapolated_after = max_follow
        warnings.append(Note.of("baseline-extended", months=max_follow, horizon=horizon))
    elif at_risk < 10:
        warnings.append(Note.of("few-at-horizon", at_risk=at_risk, horizon=horizon))
    knots, thinned = _knots(times, cumhaz, horizon, max_follow, opts.max_knots)
    return Recalibration(
        mode=mode,
        card=card,
        cohort=cohort,
        params=params,
        cox=cox,
        knots=knots,
        n=n,
        events=events,
        max_follow_up_months=max_follow,
        at_risk_at_horizon=at_risk,
        knots_thinned=thinned,
        extrapolated_after_months=extrapolated_after,
        warnings=tuple(warnings),
    )


def _knots(
    times: FloatArray, cumhaz: FloatArray, horizon: float, max_follow: float, max_knots: int
) -> tuple[tuple[tuple[float, float], ...], bool]:
    """(month, survival) knots from Breslow's step function; see the module docstring."""
    keep = np.arange(len(times))
    thinned = len(times) > max_knots
    if thinned:
        keep = np.unique(np.round(np.linspace(0, len(times) - 1, max_knots)).astype(np.intp))
    months = [0.0, *times[keep].tolist()]
    hazards = [0.0, *cumhaz[keep].tolist()]
    last_h = float(cumhaz[-1])
    if max_follow < horizon:  # constant-hazard extension (allow_short_follow_up)
        half = max_follow / 2.0
        before = float(np.interp(half, [0.0, *times.tolist()], [0.0, *cumhaz.tolist()]))
        rate = (last_h - before) / (max_follow - half)
        if rate <= 0:
            rate = last_h / max_follow
        if months[-1] < max_follow:
            months.append(max_follow)
            hazards.append(last_h)
        months.append(horizon)
        hazards.append(last_h + rate * (horizon - max_follow))
    elif months[-1] < horizon:
        months.append(horizon)
        hazards.append(last_h)
    knots: list[tuple[float, float]] = []
    for month, hazard in zip(months, hazards, strict=True):
        m = round(month, 6)
        s = 1.0 if hazard == 0 else float(f"{math.exp(-hazard):.12g}")
        if len(knots) == 1 and m <= 0.0:  # a recurrence within a second of the ablation
            m = 1e-6
        if knots and m <= knots[-1][0]:  # rounding merged two times: keep the later value
            knots[-1] = (knots[-1][0], s)
        else:
            knots.append((m, s))
    return tuple(knots), thinned


def _left_out_hint(cohort: Cohort) -> str:
    if not cohort.excluded:
        return ""
    counts = ", ".join(f"{k}: {v}" for k, v in cohort.exclusion_counts().items())
    return f"; {len(cohort.excluded)} left out ({counts})"
