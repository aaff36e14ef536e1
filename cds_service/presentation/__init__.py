"""How a risk is said (clinical-presentation.md): one layer between ``assess()`` and the renderers.

No Flask here: the CDS card, the SMART page, the CLI and the reports all read a :class:`Statement`
and lay it out; none formats a risk or picks a tier itself.
"""

from cds_service.presentation.numbers import percent, percent_range
from cds_service.presentation.statement import (
    NO_CI_STATEMENT,
    RANGE_STATEMENT,
    ConditionalFigure,
    Review,
    RiskFigure,
    Statement,
    present,
    reviews_ahead,
    tier_for,
)

__all__ = [
    "NO_CI_STATEMENT",
    "RANGE_STATEMENT",
    "ConditionalFigure",
    "Review",
    "RiskFigure",
    "Statement",
    "percent",
    "percent_range",
    "present",
    "reviews_ahead",
    "tier_for",
]
