"""Cox proportional hazards by partial likelihood, in numpy (after lifelines' ``CoxPHFitter``).

* Ties: Efron's approximation. The log-likelihood, score and information are computed in one
  vectorised pass over the sorted data (suffix sums for the risk sets, one row per event for the
  Efron terms), so a fit of thousands of patients takes milliseconds.
* Fitting: Newton-Raphson from zero on centred and scaled covariates (as lifelines does; the
  estimates are invariant to it, the conditioning is not), with step halving whenever a step would
  lower the log-likelihood. Converged when the largest Newton step is below ``tol`` on the scaled
  covariates.
* Separation (monotone likelihood): a coefficient that runs past ``max_scaled_coefficient`` on the
  scaled covariates (a hazard ratio of e^10 per standard deviation) while the likelihood still rises,
  or an information matrix that turns singular once a coefficient is past half that, has no finite
  estimate: :class:`SeparationError` names it. (Newton steps along a separating direction stay near
  one standard deviation while the likelihood flattens, so the bound is reached in about 20 steps,
  before the information underflows.)
* Baseline: Breslow's estimator of the cumulative baseline hazard at the fitted coefficients, as
  lifelines computes it (also after an Efron fit). Unlike lifelines, which reports it for the mean
  covariate vector, ``baseline_cumulative_hazard_`` is for the covariate vector zero; multiply by
  ``exp(mean @ params_)`` to compare with lifelines. :func:`breslow` gives it for any covariate
  vector and any fixed coefficients (the baseline-only recalibration).

Learned state lives in trailing-underscore attributes and :meth:`CoxPH.fit` returns ``self``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cds_service.model.engine import FloatArray
from cds_service.recalibration.errors import CohortError, ConvergenceError, SeparationError

IntArray = NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class LikelihoodRatioTest:
    """``2 (ll - ll_null)`` against chi-squared with one degree of freedom per coefficient."""

    statistic: float
    degrees_of_freedom: int
    p_value: float


@dataclass(frozen=True, slots=True)
class SurvivalData:
    """Covariates, durations and events checked and sorted by duration (ties kept together)."""

    x: FloatArray  # (n, d), sorted by duration
    durations: FloatArray  # (n,) ascending
    events: NDArray[np.bool_]  # (n,)
    event_times: FloatArray  # (K,) distinct durations with at least one event
    deaths: FloatArray  # (K,) number of events at each event time
    risk_start: IntArray  # (K,) first sorted row still at risk at each event time
    event_group: IntArray  # (number of events,) which event time each event row belongs to
    slot_group: IntArray  # (number of events,) Efron term -> event time
    slot_fraction: FloatArray  # (number of events,) l / d_k for the l-th Efron term at time k


def survival_data(x: ArrayLike, durations: ArrayLike, events: ArrayLike) -> SurvivalData:
    """Check and sort the data once; raises :class:`CohortError` naming the problem."""
    xa = np.asarray(x, dtype=np.float64)
    if xa.ndim == 1:
        xa = xa[:, None]
    t = np.asarray(durations, dtype=np.float64)
    e_raw = np.asarray(events, dtype=np.float64)
    if xa.ndim != 2 or t.ndim != 1 or e_raw.ndim != 1 or not (len(xa) == len(t) == len(e_raw)):
        raise CohortError("covariates, durations and events must have one row per patient")
    n = xa.shape[0]
    if n == 0:
        raise CohortError("the cohort is empty")
    if not np.isfinite(xa).all():
        raise CohortError("covariates must be finite numbers")
    if not (np.isfinite(t).all() and (t >= 0).all()):
        raise CohortError("durations must be finite and not negative")
    if not np.isin(e_raw, (0.0, 1.0)).all():
        raise CohortError("events must be 0 (censored) or 1 (event)")
    e = e_raw == 1.0
    if not e.any():
        raise CohortError(
            f"no events among {n} patients: every patient is censored, so the partial likelihood "
            "carries no information"
        )
    order = np.argsort(t, kind="stable")
    xs, ts, es = xa[order], t[order], e[order]
    event_times, deaths = np.unique(ts[es], return_counts=True)
    risk_start = np.searchsorted(ts, event_times, side="left")
    event_group = np.searchsorted(event_times, ts[es])
    slot_group = np.repeat(np.arange(len(event_times)), deaths)
    first_slot = np.repeat(np.cumsum(deaths) - deaths, deaths)
    slot_fraction = (np.arange(len(slot_group)) - first_slot) / np.repeat(deaths, deaths)
    return SurvivalData(
        x=xs,
        durations=ts,
        events=es,
        event_times=event_times,
        deaths=deaths.astype(np.float64),
        risk_start=risk_start,
        event_group=event_group,
        slot_group=slot_group,
        slot_fraction=slot_fraction.astype(np.float64),
    )


def efron(data: SurvivalData, beta: FloatArray) -> tuple[float, FloatArray, FloatArray]:
    """Efron partial log-likelihood, its gradient and Hessian at ``beta``."""
    x = data.x
    eta = x @ beta
    shift = float(eta.max())  # exp(eta - shift) <= 1: no overflow; ratios are unchanged
    phi = np.exp(eta - shift)
    phi_x = phi[:, None] * x
    phi_xx = phi_x[:, :, None] * x[:, None, :]
    # Risk-set sums at each event time: suffix sums from the first row still at risk.
    start = data.risk_start
    r = _suffix(phi)[start]
    rx = _suffix(phi_x)[start]
    rxx = _suffix(phi_xx)[start]
    # Sums over the events tied at each event time.
    k = len(data.event_times)
    grp = data.event_group
    ev = data.events
    t = np.bincount(grp, weights=phi[ev], minlength=k)
    tx = np.zeros((k,) + x.shape[1:])
    np.add.at(tx, grp, phi_x[ev])
    txx = np.zeros((k,) + phi_xx.shape[1:])
    np.add.at(txx, grp, phi_xx[ev])
    # One Efron term per event: the risk set less a growing share of the tied events.
    g, f = data.slot_group, data.slot_fraction
    den = r[g] - f * t[g]
    num = rx[g] - f[:, None] * tx[g]
    ll = float(eta[ev].sum() - np.log(den).sum() - shift * len(g))
    grad: FloatArray = x[ev].sum(axis=0) - (num / den[:, None]).sum(axis=0)
    second = (rxx[g] - f[:, None, None] * txx[g]) / den[:, None, None]
    outer = num[:, :, None] * num[:, None, :] / (den**2)[:, None, None]
    hess: FloatArray = -(second - outer).sum(axis=0)
    return ll, grad, hess


def _suffix(a: FloatArray) -> FloatArray:
    out: FloatArray = np.cumsum(a[::-1], axis=0)[::-1]
    return out


def breslow(
    x: ArrayLike,
    durations: ArrayLike,
    events: ArrayLike,
    params: ArrayLike,
    at: ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Breslow's cumulative hazard for covariate vector ``at`` (default zero) at fixed ``params``.

    Returns the distinct event times and the cumulative hazard just after each:
    ``H(t) = sum over event times u <= t of d(u) / sum over T_j >= u of exp((x_j - at) @ params)``.
    """
    data = survival_data(x, durations, events)
    beta = np.asarray(params, dtype=np.float64).reshape(-1)
    if beta.shape[0] != data.x.shape[1]:
        raise ValueError("one coefficient per covariate column is needed")
    origin = np.zeros_like(beta) if at is None else np.asarray(at, dtype=np.float64).reshape(-1)
    eta = (data.x - origin) @ beta
    shift = float(eta.max())
    risk = _suffix(np.exp(eta - shift))[data.risk_start]
    increments = data.deaths / risk * math.exp(-shift)
    return data.event_times, np.cumsum(increments)


def chi2_sf(statistic: float, df: int) -> float:
    """Upper tail of the chi-squared distribution with a whole number of degrees of freedom."""
    if df < 1:
        raise ValueError("degrees of freedom must be a positive integer")
    x = max(statistic, 0.0) / 2.0
    if df % 2 == 0:
        terms = [x**k / math.factorial(k) for k in range(df // 2)]
        return math.exp(-x) * math.fsum(terms)
    terms = [x ** (k - 0.5) / math.gamma(k + 0.5) for k in range(1, (df - 1) // 2 + 1)]
    return math.erfc(math.sqrt(x)) + math.exp(-x) * math.fsum(terms)


class CoxPH:
    """Cox proportional hazards model fitted by Efron partial likelihood.

    >>> model = CoxPH().fit(x, months, recurred, names=["x1", "x2"])  # doctest: +SKIP
    >>> model.params_, model.standard_errors_, model.log_likelihood_ratio_test_  # doctest: +SKIP
    """

    #: Newton-Raphson stops when the largest step on the scaled covariates is below this.
    tol: float
    max_iterations: int
    #: A coefficient beyond this on the scaled covariates (HR e^10 per SD) means separation.
    max_scaled_coefficient: float
    alpha: float

    names_: tuple[str, ...]
    params_: FloatArray
    variance_matrix_: FloatArray
    standard_errors_: FloatArray
    confidence_intervals_: FloatArray  # (d, 2): lower, upper at level 1 - alpha
    z_: FloatArray
    p_values_: FloatArray
    log_likelihood_: float
    log_likelihood_null_: float
    log_likelihood_ratio_test_: LikelihoodRatioTest
    n_iterations_: int
    mean_: FloatArray  # covariate means (lifelines reports its baseline at these)
    baseline_times_: FloatArray  # distinct event times
    baseline_cumulative_hazard_: FloatArray  # cumulative, covariates zero

    def __init__(
        self,
        alpha: float = 0.05,
        tol: float = 1e-9,
        max_iterations: int = 100,
        max_scaled_coefficient: float = 10.0,
    ) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        self.alpha = alpha
        self.tol = tol
        self.max_iterations = max_iterations
        self.max_scaled_coefficient = max_scaled_coefficient

    def fit(
        self,
        x: ArrayLike,
        durations: ArrayLike,
        events: ArrayLike,
        names: Sequence[str] | None = None,
    ) -> CoxPH:
        """Fit by Newton-Raphson; raises CohortError, ConvergenceError or SeparationError."""
        data = survival_data(x, durations, events)
        n, d = data.x.shape
        names_ = tuple(names) if names is not None else tuple(f"x{j + 1}" for j in range(d))
        if len(names_) != d:
            raise ValueError("one name per covariate column is needed")
        if n < d + 2:
            raise CohortError(f"{n} patients are too few to estimate {d} coefficient(s)")
        mean = data.x.mean(axis=0)
        scale = data.x.std(axis=0)
        constant = [names_[j] for j in range(d) if not scale[j] > 1e-12 * max(1.0, abs(mean[j]))]
        if constant:
            raise CohortError(
                f"{', '.join(constant)} takes the same value for every patient, so its coefficient "
                "cannot be estimated"
            )
        scaled = dataclasses.replace(data, x=(data.x - mean) / scale)
        beta_s, ll, hess_s, iterations = self._newton_raphson(scaled, names_, scale)
        try:
            cov_s = np.linalg.inv(-hess_s)
        except np.linalg.LinAlgError as exc:
            raise ConvergenceError(
                "the information matrix is singular at the estimate (collinear covariates?)"
            ) from exc
        self.names_ = names_
        self.params_ = beta_s / scale
        self.variance_matrix_ = cov_s / np.outer(scale, scale)
        self.standard_errors_ = np.sqrt(np.diag(self.variance_matrix_))
        z_crit = NormalDist().inv_cdf(1 - self.alpha / 2)
        self.confidence_intervals_ = np.column_stack(
            (
                self.params_ - z_crit * self.standard_errors_,
                self.params_ + z_crit * self.standard_errors_,
            )
        )
        self.z_ = self.params_ / self.standard_errors_
        self.p_values_ = np.array([chi2_sf(float(z) ** 2, 1) for z in self.z_])
        self.log_likelihood_ = ll
        self.log_likelihood_null_ = efron(scaled, np.zeros(d))[0]
        statistic = 2.0 * (ll - self.log_likelihood_null_)
        self.log_likelihood_ratio_test_ = LikelihoodRatioTest(statistic, d, chi2_sf(statistic, d))
        self.n_iterations_ = iterations
        self.mean_ = mean
        times, cumulative = breslow(data.x, data.durations, data.events, self.params_)
        self.baseline_times_ = times
        self.baseline_cumulative_hazard_ = cumulative
        return self

    def _newton_raphson(
        self, data: SurvivalData, names: tuple[str, ...], scale: FloatArray
    ) -> tuple[FloatArray, float, FloatArray, int]:
        d = data.x.shape[1]
        beta = np.zeros(d)
        ll, grad, hess = efron(data, beta)
        for iteration in range(1, self.max_iterations + 1):
            try:
                chol = np.linalg.cholesky(-hess)
            except np.linalg.LinAlgError as exc:
                self._check_runaway(beta, names, scale, self.max_scaled_coefficient / 2)
                raise ConvergenceError(
                    "the information matrix is not positive definite (collinear covariates?)"
                ) from exc
            step = np.linalg.solve(chol.T, np.linalg.solve(chol, grad))
            if not np.isfinite(step).all():
                raise ConvergenceError("the Newton step is not finite")
            if np.abs(step).max() < self.tol:
                return beta, ll, hess, iteration - 1
            # Step halving: never accept a step that lowers the log-likelihood (beyond rounding).
            slack = 1e-12 * max(1.0, abs(ll))
            size = 1.0
            for _ in range(40):
                candidate = beta + size * step
                c_ll, c_grad, c_hess = efron(data, candidate)
                if math.isfinite(c_ll) and c_ll >= ll - slack:
                    break
                size /= 2.0
            else:
                self._check_runaway(beta, names, scale, self.max_scaled_coefficient / 2)
                raise ConvergenceError(
                    f"step halving failed after {iteration} Newton-Raphson iterations: no step "
                    "raises the partial likelihood"
                )
            beta, ll, grad, hess = candidate, c_ll, c_grad, c_hess
            self._check_runaway(beta, names, scale, self.max_scaled_coefficient)
        self._check_runaway(beta, names, scale, self.max_scaled_coefficient / 2)
        raise ConvergenceError(
            f"Newton-Raphson did not converge in {self.max_iterations} iterations"
        )

    @staticmethod
    def _check_runaway(
        beta: FloatArray, names: tuple[str, ...], scale: FloatArray, bound: float
    ) -> None:
        runaway = np.abs(beta) > bound
        if runaway.any():
            raise SeparationError(_separation_message(names, beta, scale, runaway))

    # -- predictions -------------------------------------------------------------------------------

    def cumulative_baseline_hazard(self, times: ArrayLike) -> FloatArray:
        """Breslow's step function at ``times`` (covariates zero)."""
        t = np.asarray(times, dtype=np.float64)
        index = np.searchsorted(self.baseline_times_, t, side="right")
        padded = np.concatenate(([0.0], self.baseline_cumulative_hazard_))
        out: FloatArray = padded[index]
        return out


def _separation_message(
    names: tuple[str, ...], beta_scaled: FloatArray, scale: FloatArray, runaway: NDArray[np.bool_]
) -> str:
    parts = [
        f"{names[j]} (coefficient {beta_scaled[j] / scale[j]:+.3g} and still "
        f"{'falling' if beta_scaled[j] < 0 else 'rising'})"
        for j in np.flatnonzero(runaway)
    ]
    return (
        "perfect separation: the partial likelihood keeps increasing as "
        + ", ".join(parts)
        + " runs to infinity, so no finite estimate exists. Typically every recurrence falls in "
        "one group of that covariate (or none does). Fit the baseline only (--mode baseline) or "
        "collect more follow-up."
    )
