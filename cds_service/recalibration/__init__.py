"""Local recalibration: fit the model card's baseline (or the whole model) on a site's own patients.

Pipeline: a source (:mod:`.sources`: FHIR server, Bulk Data NDJSON, CSV) -> the cohort table with
every patient left out and why (:mod:`.cohort`) -> the fit (:mod:`.fit`, on :mod:`.coxph`) -> a new
model card the service loads unchanged (:mod:`.card_writer`) -> a validation report of the new card
beside the published one (:mod:`.validate` on :mod:`.metrics` and :mod:`.bootstrap`, rendered by
:mod:`.report` and :mod:`.html_report`). :mod:`.simulate` draws outcomes from a card for
tests and the sandbox; :mod:`.commands` adds ``hfs-cds fit`` and ``hfs-cds validate``.

numpy only: no scipy, no pandas, no lifelines at run time.
"""

from cds_service.recalibration.card_writer import build_card, read_card_json, write_card
from cds_service.recalibration.cohort import (
    Cohort,
    CohortRow,
    Exclusion,
    cohort_from_arrays,
    cohort_from_csv,
    cohort_from_resources,
    cohort_from_source,
)
from cds_service.recalibration.coxph import CoxPH, LikelihoodRatioTest, breslow
from cds_service.recalibration.errors import (
    CohortError,
    ConvergenceError,
    RecalibrationError,
    SeparationError,
    SourceError,
)
from cds_service.recalibration.fit import FitMode, FitOptions, Recalibration, recalibrate
from cds_service.recalibration.metrics import harrell_c, kaplan_meier, uno_c
from cds_service.recalibration.report import report_json
from cds_service.recalibration.simulate import (
    SimulatedFollowUp,
    draw_outcomes,
    simulate_cohort,
    simulate_follow_up,
)
from cds_service.recalibration.sources import (
    SourceData,
    fetch_fhir_resources,
    read_ndjson_dir,
    write_ndjson_dir,
)
from cds_service.recalibration.validate import Validation, ValidationOptions, validate

__all__ = [
    "Cohort",
    "CohortError",
    "CohortRow",
    "ConvergenceError",
    "CoxPH",
    "Exclusion",
    "FitMode",
    "FitOptions",
    "LikelihoodRatioTest",
    "RecalibrationError",
    "Recalibration",
    "SeparationError",
    "SimulatedFollowUp",
    "SourceData",
    "SourceError",
    "Validation",
    "ValidationOptions",
    "breslow",
    "build_card",
    "cohort_from_arrays",
    "cohort_from_csv",
    "cohort_from_resources",
    "cohort_from_source",
    "draw_outcomes",
    "fetch_fhir_resources",
    "harrell_c",
    "kaplan_meier",
    "read_card_json",
    "read_ndjson_dir",
    "recalibrate",
    "report_json",
    "simulate_cohort",
    "simulate_follow_up",
    "uno_c",
    "validate",
    "write_card",
    "write_ndjson_dir",
]
