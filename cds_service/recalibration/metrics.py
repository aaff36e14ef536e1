"""Survival validation statistics in numpy, one estimator per function, each documented where it
is defined: Kaplan-Meier with Greenwood's variance, Harrell's C (lifelines' conventions) and Uno's
C, follow-up by reverse Kaplan-Meier, the evaluation horizon, risk groups that never split tied
predictions, and smoothed calibration.

Every point estimate is an :class:`Estimate`: a value, a 95% interval and, whenever the value or
its interval is undefined, a note that says why (a report never prints a bare "n/a"). Notes are
codes with parameters (:class:`.notes.Note`), worded in the reader's language by the renderers.
"""

from __future__ import annotations

import gettext
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cds_service.model.engine import FloatArray
from cds_service.recalibration.errors import CohortError
from cds_service.recalibration.notes import ENGLISH, N_, Note

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its 95% interval; ``note`` says why either is undefined."""

    value: float  # NaN only with a note
    low: float = math.nan
    high: float = math.nan
    interval: str = ""  # how the interval was made ("log-log Greenwood", "bootstrap percentile")
    note: Note | None = None

    def __post_init__(self) -> None:
        if math.isnan(self.value) and not self.note:
            raise ValueError("an undefined estimate needs a note saying why")

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def as_json(
        self, digits: int = 6, words: gettext.NullTranslations = ENGLISH
    ) -> dict[str, object]:
        """``{"estimate", "ci95", "interval", "note"}``; null where undefined (strict JSON). The
        note is English (JSON is for machines) unless the HTML page asks for its reader's words."""
        return {
            "estimate": None if math.isnan(self.value) else round(self.value, digits),
            "ci95": [round(self.low, digits), round(self.high, digits)]
            if self.has_interval
            else None,
            "interval": self.interval or None,
            "note": self.note.say(words) if self.note else None,
        }


# -- Kaplan-Meier -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KaplanMeier:
    """Kaplan-Meier survival just after each distinct event time, with Greenwood's sum."""

    times: FloatArray
    survival: FloatArray
    greenwood: FloatArray  # sum of d / (n (n - d)) up to each time
    last_time: float  # the largest follow-up time (event or censored)
    at_risk: NDArray[np.intp]  # number at risk at each event time
    events: NDArray[np.intp]  # events at each event time

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

    def risk(self, t: float) -> Estimate:
        """Cumulative incidence ``1 - S(t)`` with its log-log interval, or why there is none."""
        n = int(self.at_risk[0]) if self.at_risk.size else 0
        all_recurred = Estimate(1.0, note=Note.of("km-all-recurred", at_start=n))
        if self.survival.size > 0 and self.survival[-1] <= 0.0 and t >= self.times[-1]:
            return all_recurred
        if t > self.last_time:
            return Estimate(math.nan, note=Note.of("km-not-observed", months=self.last_time))
        s, s_lo, s_hi = self.at(t)
        i = int(np.searchsorted(self.times, t, side="right"))
        if i == 0:
            return Estimate(0.0, note=Note.of("km-none-yet"))
        if s <= 0.0:
            return all_recurred
        return Estimate(1.0 - s, 1.0 - s_hi, 1.0 - s_lo, "log-log Greenwood")

    def quantile_time(self, p: float) -> float:
        """The first time survival falls to ``1 - p`` or below (NaN when it never does)."""
        below = np.flatnonzero(self.survival <= 1.0 - p + 1e-12)
        return float(self.times[below[0]]) if below.size else math.nan


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
    return KaplanMeier(
        times, survival, np.cumsum(terms), float(t.max()), at_risk.astype(np.intp), deaths
    )


# -- discrimination -----------------------------------------------------------------------------------


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


def uno_c(time: ArrayLike, event: ArrayLike, risk: ArrayLike, horizon: float) -> float:
    """Uno's C truncated at ``horizon`` (Uno et al., Stat Med 2011;30:1105).

    ``sum w_i I(T_i < T_j) [I(r_i > r_j) + 1/2 I(r_i = r_j)] / sum w_i I(T_i < T_j)`` over
    patients ``i`` who recurred at ``T_i <= horizon``, with ``w_i = G(T_i-)^-2`` and ``G`` the
    reverse Kaplan-Meier of censoring (censorings are its events; at risk: every patient with
    ``T >= u``) just before ``T_i``. The weights undo the censoring that makes Harrell's C depend
    on the follow-up pattern. NaN when no pair is usable.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64) == 1
    r = np.asarray(risk, dtype=np.float64)
    censoring = kaplan_meier(t, (~e).astype(np.float64))
    events = np.flatnonzero(e & (t <= horizon))
    before = np.searchsorted(censoring.times, t[events], side="left")
    padded = np.concatenate(([1.0], censoring.survival))  # G = 1 before the first censoring
    g = padded[before]
    weight = 1.0 / g**2
    numerator = 0.0
    denominator = 0.0
    for start in range(0, len(events), 512):
        chunk = slice(start, start + 512)
        i = events[chunk]
        w = weight[chunk]
        later = t[None, :] > t[i][:, None]
        ri = r[i][:, None]
        # Per-row counts as booleans first (fast), weighted once per recurrence.
        concordant = (later & (ri > r[None, :])).sum(axis=1)
        tied = (later & (ri == r[None, :])).sum(axis=1)
        denominator += float(w @ later.sum(axis=1))
        numerator += float(w @ (concordant + 0.5 * tied))
    return numerator / denominator if denominator > 0 else math.nan


# -- follow-up and horizon ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowUp:
    """Potential follow-up by reverse Kaplan-Meier (recurrences treated as censored)."""

    median: Estimate
    q1: float  # NaN when not reached
    q3: float
    longest: float


def follow_up_time(time: ArrayLike, event: ArrayLike) -> FollowUp:
    """Median follow-up by reverse Kaplan-Meier: the KM of ``(time, 1 - event)``.

    It estimates how long patients would have been followed had none recurred, which a median
    of observed times (shortened by recurrences) understates. The median is the first time the
    reverse survival curve is at or below 0.5.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    reverse = kaplan_meier(t, 1.0 - e)
    median = reverse.quantile_time(0.5)
    longest = float(t.max())
    estimate = (
        Estimate(median, note=Note.of("follow-up-descriptive"))
        if not math.isnan(median)
        else Estimate(math.nan, note=Note.of("follow-up-not-reached", months=longest))
    )
    return FollowUp(estimate, reverse.quantile_time(0.25), reverse.quantile_time(0.75), longest)


@dataclass(frozen=True, slots=True)
class Horizon:
    """The time every figure of the report is given at, and why that time."""

    months: float
    model_months: float
    at_risk: int  # patients with follow-up reaching ``months``
    at_risk_at_model_horizon: int
    min_at_risk: int

    @property
    def rule(self) -> str:
        return "model-horizon" if self.months == self.model_months else "latest-with-min-at-risk"

    @property
    def reason(self) -> Note:
        """Why this horizon (without the number of months, which the report shows first)."""
        if self.rule == "model-horizon":
            return Note.of(
                "horizon-model",
                model_months=self.model_months,
                at_risk=self.at_risk,
                min_at_risk=self.min_at_risk,
            )
        return Note.of(
            "horizon-latest",
            at_model=self.at_risk_at_model_horizon,
            model_months=self.model_months,
            min_at_risk=self.min_at_risk,
            at_risk=self.at_risk,
        )


def evaluation_horizon(time: ArrayLike, model_horizon: float, min_at_risk: int = 10) -> Horizon:
    """The model's horizon if ``min_at_risk`` patients are followed to it, else the latest time
    with that many followed: the ``min_at_risk``-th longest follow-up time."""
    t = np.asarray(time, dtype=np.float64)
    if min_at_risk < 1:
        raise ValueError("min_at_risk must be at least 1")
    if t.size < min_at_risk:
        raise CohortError(
            f"{t.size} patients are fewer than the {min_at_risk} that must remain at risk at the "
            "evaluation horizon (--min-at-risk)"
        )
    at_model = int((t >= model_horizon).sum())
    if at_model >= min_at_risk:
        return Horizon(model_horizon, model_horizon, at_model, at_model, min_at_risk)
    months = float(np.sort(t)[t.size - min_at_risk])
    return Horizon(months, model_horizon, int((t >= months).sum()), at_model, min_at_risk)


# -- grouping -----------------------------------------------------------------------------------------


def risk_groups(score: ArrayLike, n_groups: int = 3) -> NDArray[np.intp]:
    """Group labels 1..G (1 = lowest score) with cuts only between distinct scores.

    Distinct scores are taken in order and each cut goes where the running count comes closest
    to an equal share (k * n / G), never splitting a set of tied scores; with G or fewer distinct
    scores each score is its own group.
    """
    s = np.asarray(score, dtype=np.float64)
    values, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    k = len(values)
    if k <= n_groups:
        out: NDArray[np.intp] = (inverse + 1).astype(np.intp)
        return out
    cumulative = np.cumsum(counts)
    cuts: list[int] = []  # index of the last distinct value of each group but the last
    for g in range(1, n_groups):
        low = cuts[-1] + 1 if cuts else 0
        high = k - 1 - (n_groups - g)  # leave a value for each later group
        target = g * s.size / n_groups
        candidates = np.arange(low, high + 1)
        cuts.append(int(candidates[np.argmin(np.abs(cumulative[candidates] - target))]))
    value_group = np.searchsorted(np.array(cuts), np.arange(k), side="left") + 1
    grouped: NDArray[np.intp] = value_group[inverse].astype(np.intp)
    return grouped


# -- smoothed calibration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalibrationCurve:
    """Observed risk at the horizon against predicted risk, smoothed; ICI = mean |obs - pred|."""

    predicted: FloatArray
    observed: FloatArray
    bandwidth: float  # on the complementary log-log scale of predicted risk
    ici: float
    note: Note | None = None


SMOOTHER = N_(
    "Beran's kernel-weighted Kaplan-Meier at the horizon: for each predicted risk p, the "
    "Kaplan-Meier estimate with every patient weighted by a Gaussian kernel in the distance "
    "between cloglog(p) and cloglog(their predicted risk); bandwidth by Silverman's rule "
    "(1.06 SD n^-1/5) on that scale. ICI: the mean over patients of |smoothed observed - "
    "predicted|."
)


def smoothed_calibration(
    predicted: ArrayLike,
    time: ArrayLike,
    event: ArrayLike,
    horizon: float,
    points: int = 25,
    bandwidth: float | None = None,
) -> CalibrationCurve:
    """See :data:`SMOOTHER`. The curve spans the range of predicted risks."""
    p = np.clip(np.asarray(predicted, dtype=np.float64), 1e-9, 1 - 1e-9)
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64) == 1
    z = np.log(-np.log1p(-p))
    sd = float(z.std())
    if sd == 0.0:
        empty = np.zeros(0)
        return CalibrationCurve(empty, empty, math.nan, math.nan, Note.of("curve-flat"))
    h = bandwidth or 1.06 * sd * z.size ** (-0.2)
    grid = np.linspace(float(z.min()), float(z.max()), points)
    observed = _beran_risk(np.concatenate((grid, z)), z, t, e, horizon, h)
    curve, at_patients = observed[:points], observed[points:]
    ici = float(np.mean(np.abs(at_patients - p)))
    predicted_grid: FloatArray = -np.expm1(-np.exp(grid))
    return CalibrationCurve(predicted_grid, curve, float(h), ici)


def _beran_risk(
    at: FloatArray, z: FloatArray, t: FloatArray, e: NDArray[np.bool_], horizon: float, h: float
) -> FloatArray:
    order = np.argsort(t, kind="stable")
    zs, ts, es = z[order], t[order], e[order]
    weights = np.exp(-0.5 * ((at[:, None] - zs[None, :]) / h) ** 2)  # (points, n)
    times = np.unique(ts[es & (ts <= horizon)])
    if times.size == 0:
        return np.zeros(at.size)
    start = np.searchsorted(ts, times, side="left")
    at_risk = np.cumsum(weights[:, ::-1], axis=1)[:, ::-1][:, start]  # (points, K)
    slot = np.searchsorted(times, ts[es & (ts <= horizon)])
    deaths = np.zeros((at.size, times.size))
    np.add.at(deaths.T, slot, weights[:, es & (ts <= horizon)].T)
    with np.errstate(divide="ignore", invalid="ignore"):
        hazard = np.where(at_risk > 0, deaths / at_risk, 0.0)
    risk: FloatArray = 1.0 - np.prod(1.0 - hazard, axis=1)
    return risk


# -- distributions ------------------------------------------------------------------------------------


def describe(values: ArrayLike) -> dict[str, float]:
    """n, mean, SD, min, quartiles and max of a numeric column."""
    v = np.asarray(values, dtype=np.float64)
    q1, median, q3 = (float(x) for x in np.quantile(v, [0.25, 0.5, 0.75]))
    return {
        "n": float(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "q1": q1,
        "median": median,
        "q3": q3,
        "max": float(v.max()),
    }
