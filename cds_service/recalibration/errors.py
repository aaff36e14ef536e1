"""The recalibration exception hierarchy (after lifelines' ``exceptions.py``).

Every error is a :class:`RecalibrationError` (a ``ValueError``) whose message says what is wrong and
what to do; the CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class RecalibrationError(ValueError):
    """Recalibration cannot go on: the cohort, the source or the fit has a problem."""


class CohortError(RecalibrationError):
    """The cohort cannot support the fit: too few patients or events, no variation, short follow-up."""


class SourceError(RecalibrationError):
    """The cohort source (FHIR server, NDJSON directory, CSV file) could not be read."""


class ConvergenceError(RecalibrationError):
    """Newton-Raphson did not converge to a finite maximum of the partial likelihood."""


class SeparationError(ConvergenceError):
    """The partial likelihood keeps increasing as a coefficient runs to infinity (monotone
    likelihood, e.g. every recurrence in one covariate group): the estimate does not exist."""
