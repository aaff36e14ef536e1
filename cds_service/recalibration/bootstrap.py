"""Seeded non-parametric bootstrap over patients: percentile intervals and Harrell's optimism.

* :class:`Bootstrap` resamples patients with replacement ``replicates`` times and recomputes a
  set of statistics on each resample; the 95% interval of each is the 2.5th and 97.5th
  percentile of its finite replicate values. A replicate where a statistic is undefined (e.g. no
  recurrence in the resample, a slope that does not converge) is left out for that statistic and
  counted in ``failed_``.
* :class:`Optimism` is Harrell's bootstrap optimism correction (Harrell, Lee & Mark, Stat Med
  1996;15:361): for each resample, refit the model by the same procedure, measure it on the
  resample (apparent) and on the original cohort (test); the optimism is the mean of apparent -
  test, and the corrected figure is the original apparent figure minus it.

Both draw their resamples from ``numpy.random.default_rng([seed, stream])`` all at once, so the
same seed gives the same intervals on any machine, and the two never share a stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from cds_service.recalibration.errors import RecalibrationError

IntArray = NDArray[np.intp]
Statistics = Mapping[str, float]
P = TypeVar("P")

DEFAULT_REPLICATES = 200
DEFAULT_SEED = 20221108
_CI_STREAM, _OPTIMISM_STREAM = 0, 1


def resamples(n: int, replicates: int, seed: int, stream: int = _CI_STREAM) -> IntArray:
    """``(replicates, n)`` patient indices drawn with replacement, reproducibly."""
    if replicates < 1 or n < 1:
        raise ValueError("replicates and n must be at least 1")
    rng = np.random.default_rng([seed, stream])
    out: IntArray = rng.integers(0, n, size=(replicates, n)).astype(np.intp)
    return out


class Bootstrap:
    """Percentile intervals of statistics of a cohort, by resampling its patients."""

    replicates: int
    seed: int
    level: float
    values_: dict[str, NDArray[np.float64]]  # (replicates,) per statistic, NaN when undefined
    intervals_: dict[str, tuple[float, float]]
    failed_: dict[str, int]
    seconds_: float

    def __init__(
        self, replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED, level: float = 0.95
    ) -> None:
        if replicates < 1:
            raise ValueError("the bootstrap needs at least one replicate")
        self.replicates, self.seed, self.level = replicates, seed, level

    def fit(self, n: int, statistics: Callable[[IntArray], Statistics]) -> Bootstrap:
        """``statistics(indices)`` gives the named statistics of the resample ``indices``."""
        started = time.perf_counter()
        rows: list[Statistics] = [
            statistics(idx) for idx in resamples(n, self.replicates, self.seed)
        ]
        names = sorted({k for row in rows for k in row})
        self.values_ = {
            k: np.array([row.get(k, math.nan) for row in rows], dtype=np.float64) for k in names
        }
        tail = (1.0 - self.level) / 2.0 * 100.0
        self.intervals_ = {}
        self.failed_ = {}
        for k, v in self.values_.items():
            finite = v[np.isfinite(v)]
            self.failed_[k] = int(v.size - finite.size)
            if finite.size >= 2:
                lo, hi = np.percentile(finite, [tail, 100.0 - tail])
                self.intervals_[k] = (float(lo), float(hi))
        self.seconds_ = time.perf_counter() - started
        return self


class Optimism(Generic[P]):
    """Harrell's optimism of apparent performance, by refitting on bootstrap resamples."""

    replicates: int
    seed: int
    optimism_: dict[str, float]
    refit_failures_: int  # resamples on which the refit itself failed (e.g. separation)
    seconds_: float

    def __init__(self, replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED) -> None:
        if replicates < 1:
            raise ValueError("the bootstrap needs at least one replicate")
        self.replicates, self.seed = replicates, seed

    def fit(
        self,
        n: int,
        refit: Callable[[IntArray], P],
        evaluate: Callable[[P, IntArray], Statistics],
    ) -> Optimism[P]:
        """``refit(indices)`` fits on a resample and predicts for every original patient;
        ``evaluate(predictions, indices)`` measures those predictions on the patients
        ``indices`` (the resample, then the whole cohort)."""
        started = time.perf_counter()
        everyone: IntArray = np.arange(n, dtype=np.intp)
        differences: dict[str, list[float]] = {}
        failures = 0
        for idx in resamples(n, self.replicates, self.seed, _OPTIMISM_STREAM):
            try:
                predictions = refit(idx)
            except RecalibrationError:
                failures += 1
                continue
            apparent = evaluate(predictions, idx)
            test = evaluate(predictions, everyone)
            for k, value in apparent.items():
                differences.setdefault(k, []).append(value - test.get(k, math.nan))
        self.optimism_ = {}
        for k, diffs in differences.items():
            finite = [d for d in diffs if math.isfinite(d)]
            if finite:
                self.optimism_[k] = math.fsum(finite) / len(finite)
        self.refit_failures_ = failures
        self.seconds_ = time.perf_counter() - started
        return self
