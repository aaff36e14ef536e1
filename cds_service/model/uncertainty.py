"""Confidence intervals for a locally refitted card (delta method on the log cumulative hazard).

The published card has no standard errors, so it has no interval; a card written by ``hfs-cds fit``
carries the coefficient covariance, and then
``log H(t|x) = log H_ref(t) + b·(x - x_ref)`` has variance ``dᵀ Σ d`` with ``d = x - x_ref``.
The baseline's own uncertainty is not included (said wherever the interval is shown).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cds_service.model.engine import RecurrenceModel

Z_95 = 1.959963984540054


def risk_interval(
    model: RecurrenceModel, minutes: float, hb_grade: float, months: Sequence[float]
) -> list[tuple[float, float]] | None:
    """95% interval of the point-estimate risk at each month, or None without a covariance."""
    card = model.card
    cov = card.covariance
    if cov is None:
        return None
    d1 = model.coded_x1(minutes) - card.reference_x1
    d2 = float(hb_grade) - card.reference_x2
    variance = d1 * d1 * cov[0][0] + 2 * d1 * d2 * cov[0][1] + d2 * d2 * cov[1][1]
    se = math.sqrt(max(variance, 0.0))
    lp = card.operation_time.coefficient * d1 + card.hb_grade.coefficient * d2
    out = []
    for t in months:
        log_h = math.log(float(model.baseline_cumulative_hazard(t))) + lp
        low, high = (-math.expm1(-math.exp(log_h + z * se)) for z in (-Z_95, Z_95))
        out.append((low, high))
    return out
