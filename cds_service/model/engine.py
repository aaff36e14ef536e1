"""The Cox recurrence model (clinical-model.md sections 1-4), vectorised with numpy.

``risk(t | x) = 1 - exp(-H_ref(t) * exp(lp(x) - lp_ref))`` with ``H_ref`` linear between the baseline
knots of the model card. One call scores one patient or a million: inputs broadcast, and the month
axis is appended last, as in lifelines' ``predict_*`` methods.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cds_service.model.card import ModelCard, Tier, X1Coding, X2Coding

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One plausible coding of the two covariates and of the reference patient."""

    x1_coding: X1Coding
    x2_coding: X2Coding
    reference_x2: float


Coding = tuple[Any, ...]  # X1 binary?, X2 ordinal?, reference X2: one value each, or arrays


def _coding(s: Scenario) -> Coding:
    return s.x1_coding == "binary", s.x2_coding == "ordinal", s.reference_x2


class _Floats:
    """The numpy functions the formula uses, on plain floats: one patient, no per-call overhead."""

    exp = staticmethod(math.exp)
    expm1 = staticmethod(math.expm1)
    minimum = staticmethod(min)
    where = staticmethod(lambda condition, if_true, if_false: if_true if condition else if_false)


def _relative_log_hazard(xp: Any, card: ModelCard, m: Any, g: Any, coding: Coding) -> Any:
    """``lp(x) - lp_ref``: the one definition, run by numpy on arrays or by :class:`_Floats`."""
    x1_binary, x2_ordinal, ref_x2 = coding
    return _x1_term(xp, card, m, x1_binary) + _x2_term(xp, card, g, x2_ordinal, ref_x2)


# The two terms of ``lp(x) - lp_ref`` apart: one patient's nine codings share two X1 terms and
# four X2 terms, so :meth:`RecurrenceModel.patient_risks` computes each once.
def _x1_term(xp: Any, card: ModelCard, m: Any, x1_binary: Any) -> Any:
    ot, per_10_from = card.operation_time, card.scenarios.x1_reference_minutes
    # X1: over the cut, or per 10 minutes around the cohort-typical operation time.
    x1 = xp.where(x1_binary, (m > ot.cut_minutes) - card.reference_x1, (m - per_10_from) / 10.0)
    return ot.coefficient * x1


def _x2_term(xp: Any, card: ModelCard, g: Any, x2_ordinal: Any, ref_x2: Any) -> Any:
    # X2: the grade, or HB II or worse vs I (grade and reference capped at II).
    x2 = xp.where(x2_ordinal, g - ref_x2, xp.minimum(g, 2.0) - xp.minimum(ref_x2, 2.0))
    return card.hb_grade.coefficient * x2


def _absolute_risk(xp: Any, lp: Any, cumhaz: Any) -> Any:
    """``1 - exp(-H(t) * exp(lp))``: the one definition of the risk."""
    return _risk_at_ratio(xp, xp.exp(lp), cumhaz)


def _risk_at_ratio(xp: Any, ratio: Any, cumhaz: Any) -> Any:
    """:func:`_absolute_risk` from the hazard ratio ``exp(lp)`` (one per coding, not per month)."""
    return -xp.expm1(-ratio * cumhaz)


class RecurrenceModel:
    """Scores recurrence risk from operation minutes and House-Brackmann grade."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self._knot_months = np.array([k.month for k in card.baseline_knots], dtype=np.float64)
        self._knot_cumhaz = -np.log([k.survival for k in card.baseline_knots])
        self.scenarios = tuple(
            Scenario(x1, x2, ref)
            for x1, x2, ref in itertools.product(
                card.scenarios.x1_codings, card.scenarios.x2_codings, card.scenarios.reference_x2
            )
        )
        # The published coding (binary X1, ordinal X2, the card's reference patient) is the point estimate.
        self.point_scenario = Scenario("binary", "ordinal", card.reference_x2)
        # The point estimate first, then the scenarios: one by one for one patient, stacked for arrays.
        self._codings = [_coding(s) for s in (self.point_scenario, *self.scenarios)]
        # For one patient: each distinct coding is scored once (the point estimate's coding is
        # also a scenario's), from its X1 and X2 terms, of which there are only 2 and 4.
        distinct = list(dict.fromkeys(self._codings))
        self._point_row = distinct.index(self._codings[0])
        self._scenario_rows = sorted({distinct.index(c) for c in self._codings[1:]})
        self._x1_flags = tuple(dict.fromkeys(c[0] for c in distinct))
        self._x2_keys = tuple(dict.fromkeys((c[1], c[2]) for c in distinct))
        self._term_pairs = [
            (self._x1_flags.index(x1), self._x2_keys.index((x2, ref))) for x1, x2, ref in distinct
        ]
        # The X2 terms depend on the grade alone, and the card allows a few whole grades: each
        # computed here once, by the same definition (2.5 -> 0.8 us of the terms per call).
        lo, hi = card.hb_grade.model_grades
        self._x2_terms_by_grade = {
            float(g): [_x2_term(_Floats, card, float(g), o, r) for o, r in self._x2_keys]
            for g in range(int(lo), int(hi) + 1)
        }
        # Where the point estimate's risk sits in a month's column of scenario risks (None when
        # the point coding is no scenario's): read there, not computed a second time.
        self._point_column = (
            self._scenario_rows.index(self._point_row)
            if self._point_row in self._scenario_rows
            else None
        )
        self._knot_month_list = [float(k) for k in self._knot_months]
        self._knot_cumhaz_list = [float(h) for h in self._knot_cumhaz]

    # -- building blocks -------------------------------------------------------------------------

    def baseline_cumulative_hazard(self, months: ArrayLike) -> FloatArray:
        """``H_ref(t)``: the reference patient's cumulative hazard, for 0 <= t <= horizon."""
        t = np.asarray(months, dtype=np.float64)
        if not ((t >= 0) & (t <= self.card.horizon_months)).all():  # NaN fails both comparisons
            raise ValueError(f"months must lie in [0, {self.card.horizon_months:g}]")
        return np.interp(t, self._knot_months, self._knot_cumhaz)

    def coded_x1(self, minutes: float) -> float:
        """X1 as the published coding scores it (shown to clinicians beside the minutes)."""
        return 1.0 if minutes > self.card.operation_time.cut_minutes else 0.0

    def relative_log_hazard(
        self, minutes: ArrayLike, hb_grade: ArrayLike, scenario: Scenario | None = None
    ) -> FloatArray:
        """``lp(x) - lp_ref`` under a scenario (default: the published coding)."""
        m, g = self._check_inputs(minutes, hb_grade)
        coding = _coding(scenario or self.point_scenario)
        return np.asarray(_relative_log_hazard(np, self.card, m, g, coding))

    # -- predictions ------------------------------------------------------------------------------

    def predict_risk(
        self,
        minutes: ArrayLike,
        hb_grade: ArrayLike,
        months: ArrayLike,
        conditional_after: ArrayLike | None = None,
        scenario: Scenario | None = None,
    ) -> FloatArray:
        """Probability of recurrence by ``months`` after the ablation.

        The result has the broadcast shape of ``minutes`` and ``hb_grade`` with the month axis
        appended. With ``conditional_after`` (months, scalar or one per patient) it is the risk of
        recurring by ``months`` for a patient still recurrence-free at that time:
        ``1 - S(t|x) / S(s|x)``, which needs ``s < t``.
        """
        lp = self.relative_log_hazard(minutes, hb_grade, scenario)
        return self._risk(lp, lp.ndim, months, conditional_after)

    def scenario_risks(
        self,
        minutes: ArrayLike,
        hb_grade: ArrayLike,
        months: ArrayLike,
        conditional_after: ArrayLike | None = None,
    ) -> FloatArray:
        """Risk under every scenario; the scenario axis comes first."""
        return self._all_risks(minutes, hb_grade, months, conditional_after)[1:]

    def risk_with_range(
        self,
        minutes: ArrayLike,
        hb_grade: ArrayLike,
        months: ArrayLike,
        conditional_after: ArrayLike | None = None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Point estimate, lowest and highest scenario risk, from one pass over all codings."""
        risks = self._all_risks(minutes, hb_grade, months, conditional_after)
        return risks[0], risks[1:].min(axis=0), risks[1:].max(axis=0)

    def patient_risks(
        self,
        minutes: float,
        hb_grade: float,
        months: Sequence[float],
        conditional_from: float | None = None,
    ) -> tuple[list[float], list[float], list[float]]:
        """One patient's point, lowest and highest risk at ``months``, and optionally one more
        entry: the risk by the last of ``months`` for a patient still recurrence-free at
        ``conditional_from`` (what :meth:`risk_with_range` gives with ``conditional_after``).

        The formula of :meth:`risk_with_range` run on plain floats: the hook scores one patient
        per request, and on arrays of one numpy's per-call overhead costs three times as much
        (8 us against 56 us; all of ``Assessor.assess`` takes about 75 us).
        """
        try:
            m, g = float(minutes), float(hb_grade)
        except (TypeError, ValueError):
            raise ValueError(
                "patient_risks scores one patient; use risk_with_range for many"
            ) from None
        lo, hi = self.card.hb_grade.model_grades
        if not 0 < m < math.inf:  # NaN fails too
            raise ValueError("operation minutes must be finite and positive")
        if not (lo <= g <= hi and g == round(g)):
            raise ValueError(f"House-Brackmann grade must be a whole number from {lo} to {hi}")
        if not months or any(not t > 0 for t in months):
            raise ValueError("months must be a non-empty list of months greater than 0")
        cumhaz = [self._cumhaz_at(t) for t in months]
        if conditional_from is not None:
            if not 0 <= conditional_from < months[-1]:
                raise ValueError("conditional_from must be >= 0 and before the last month")
            cumhaz.append(cumhaz[-1] - self._cumhaz_at(conditional_from))
        # The formula of _relative_log_hazard and _absolute_risk with shared work: 2 X1 terms (the
        # X2 terms are the card's, per grade), 8 exp() in all and 8 risks a month, where it was
        # 9 predictors and, each month, an exp() and a risk per coding: 17 -> 7.7 us per call
        # (issue 12). The same operations in the same order, so the same numbers to the last bit
        # (test_one_patient_path_is_the_engine_formula_to_the_last_bit pins it).
        card = self.card
        x1 = [_x1_term(_Floats, card, m, flag) for flag in self._x1_flags]
        x2 = self._x2_terms_by_grade[g]  # g is one of the card's whole grades (checked above)
        exp, expm1 = math.exp, math.expm1
        ratios = [exp(x1[i] + x2[j]) for i, j in self._term_pairs]
        point_ratio = ratios[self._point_row]
        scenario_ratios = [ratios[i] for i in self._scenario_rows]
        at = self._point_column
        point: list[float] = []
        low: list[float] = []
        high: list[float] = []
        for h in cumhaz:
            column = [-expm1(-ratio * h) for ratio in scenario_ratios]  # _risk_at_ratio
            point.append(column[at] if at is not None else -expm1(-point_ratio * h))
            low.append(min(column))
            high.append(max(column))
        return point, low, high

    def _cumhaz_at(self, t: float) -> float:
        """``H_ref(t)`` for one month value: np.interp's formula, without an array."""
        if not 0 <= t <= self.card.horizon_months:
            raise ValueError(f"months must lie in [0, {self.card.horizon_months:g}]")
        knots, cumhaz = self._knot_month_list, self._knot_cumhaz_list
        j = bisect.bisect_right(knots, t) - 1
        if j == len(knots) - 1 or knots[j] == t:
            return cumhaz[j]
        slope = (cumhaz[j + 1] - cumhaz[j]) / (knots[j + 1] - knots[j])
        return slope * (t - knots[j]) + cumhaz[j]

    def scenario_range(
        self,
        minutes: ArrayLike,
        hb_grade: ArrayLike,
        months: ArrayLike,
        conditional_after: ArrayLike | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """The lowest and highest risk over the plausible codings (not a confidence interval)."""
        risks = self.scenario_risks(minutes, hb_grade, months, conditional_after)
        return risks.min(axis=0), risks.max(axis=0)

    def tier(self, risk_12m: float) -> Tier:
        """The first tier (highest threshold first) whose threshold the risk reaches."""
        return self.card.tier_for(risk_12m)

    # -- internals ---------------------------------------------------------------------------------

    def _all_risks(
        self,
        minutes: ArrayLike,
        hb_grade: ArrayLike,
        months: ArrayLike,
        conditional_after: ArrayLike | None,
    ) -> FloatArray:
        """The point estimate, then every scenario, on a first axis: one numpy pass."""
        m, g = self._check_inputs(minutes, hb_grade)
        shape = (-1,) + (1,) * m.ndim  # the scenario axis first, then the patients'
        coding = tuple(np.reshape(column, shape) for column in zip(*self._codings, strict=True))
        lp = np.asarray(_relative_log_hazard(np, self.card, m, g, coding))
        return self._risk(lp, m.ndim, months, conditional_after)

    def _risk(
        self,
        lp: FloatArray,
        patient_ndim: int,
        months: ArrayLike,
        conditional_after: ArrayLike | None,
    ) -> FloatArray:
        """``1 - exp(-H(t) * exp(lp))`` with the month axis appended to ``lp``'s shape."""
        t = np.asarray(months, dtype=np.float64)
        if np.any(t <= 0):
            raise ValueError("months must be greater than 0")
        cumhaz = self.baseline_cumulative_hazard(t)
        if conditional_after is not None:
            s = np.asarray(conditional_after, dtype=np.float64)
            if s.ndim > patient_ndim:
                raise ValueError("conditional_after must be a scalar or one value per patient")
            # One start time per patient, broadcast against the month axis appended last.
            s = np.broadcast_to(s, lp.shape).reshape(lp.shape + (1,) * t.ndim)
            if np.any(s >= t) or np.any(s < 0):
                raise ValueError("conditional_after must be >= 0 and before every requested month")
            cumhaz = cumhaz - self.baseline_cumulative_hazard(s)
        return np.asarray(_absolute_risk(np, lp.reshape(lp.shape + (1,) * t.ndim), cumhaz))

    # -- validation --------------------------------------------------------------------------------

    def _check_inputs(
        self, minutes: ArrayLike, hb_grade: ArrayLike
    ) -> tuple[FloatArray, FloatArray]:
        m = np.asarray(minutes, dtype=np.float64)
        g = np.asarray(hb_grade, dtype=np.float64)
        if not ((m > 0) & (m < np.inf)).all():  # NaN fails both comparisons
            raise ValueError("operation minutes must be finite and positive")
        lo, hi = self.card.hb_grade.model_grades
        if not ((g >= lo) & (g <= hi) & (g == np.round(g))).all():
            raise ValueError(f"House-Brackmann grade must be a whole number from {lo} to {hi}")
        return m, g
