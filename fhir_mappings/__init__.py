"""FHIR R4 resources in, the recurrence model's inputs out: a pure layer (no HTTP, no config).

:func:`map_patient` reads one patient's Procedures, Observations and Conditions (plain JSON or
fhir.resources models) and returns :class:`PatientInputs`: the index ablation, operation time and
House-Brackmann grade, each with its provenance or a :class:`Problem` saying precisely why it
could not be derived, plus the facts that rule scoring out. Which codes count is data
(:class:`ValueSets`).
"""

from .collect import resources_from_bundle
from .formatting import grade_from_roman, roman
from .patient import map_patient
from .subjects import infer_patient_id
from .types import (
    AblationProcedure,
    Code,
    Diagnosis,
    HouseBrackmannGrade,
    MappingParameters,
    OperationTime,
    PatientInputs,
    Problem,
    Provenance,
    Reason,
    Resource,
)
from .valuesets import CodeSet, ValueSetError, ValueSets, load_value_sets

__all__ = [
    "AblationProcedure",
    "Code",
    "CodeSet",
    "Diagnosis",
    "HouseBrackmannGrade",
    "MappingParameters",
    "OperationTime",
    "PatientInputs",
    "Problem",
    "Provenance",
    "Reason",
    "Resource",
    "ValueSetError",
    "ValueSets",
    "grade_from_roman",
    "infer_patient_id",
    "load_value_sets",
    "map_patient",
    "resources_from_bundle",
    "roman",
]
