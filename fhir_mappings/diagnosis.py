"""Hemifacial spasm on record: context for the card, not a model input."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from .condition_status import voided
from .fhir_time import time_key
from .records import Record
from .resource_dates import condition_recorded
from .types import Diagnosis
from .valuesets import ValueSets


def diagnosis(
    conditions: Sequence[Record], value_sets: ValueSets, reference: datetime | None = None
) -> Diagnosis | None:
    """The most recently recorded hemifacial spasm Condition that is not refuted or in error."""
    found = []
    for record in conditions:
        code = value_sets.hemifacial_spasm_condition.first(record.codes)
        if code is not None and voided(record.resource) is None:
            recorded = condition_recorded(record.resource, reference)  # read once, kept
            found.append((time_key(recorded), record, code, recorded))
    if not found:
        return None
    _, record, code, recorded = max(found, key=lambda f: (f[0], f[1].order))
    return Diagnosis(code, record.provenance(recorded.text if recorded else None))
