"""Follow-up outcomes for synthetic patients, drawn from a model card (recalibration sandbox).

The recalibration package draws outcomes for patients as a FHIR server stores them (ids and
``Patient/<id>`` references). Synthetic patients are transaction entries instead (``urn:uuid``
references, business identifiers, no ids), so this module shows the simulator each patient as
stored, then turns the drawn Encounters and recurrence Conditions back into transaction entries
that reference the patient and carry their own business identifiers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime

from cds_service.model import ModelCard
from cds_service.recalibration.simulate import simulate_follow_up
from cds_service.sandbox.bundles import full_url, rewrite_references
from cds_service.sandbox.scenarios import SyntheticPatient
from fhir_mappings import Resource, ValueSets


def follow_up_entries(
    card: ModelCard,
    patients: Sequence[SyntheticPatient],
    *,
    seed: int,
    as_of: datetime,
    value_sets: ValueSets | None = None,
) -> dict[str, list[Resource]]:
    """Extra resources by patient key, for :func:`~cds_service.sandbox.scenarios.build_bundle`."""
    by_key = {p.key: p for p in patients}
    stored = {p.key: _as_stored(p) for p in patients}
    drawn = simulate_follow_up(card, stored, seed=seed, as_of=as_of, value_sets=value_sets)
    entries: dict[str, list[Resource]] = {}
    fullurls: dict[str, str] = {}  # "Encounter/<id>" -> the entry's urn:uuid
    for resource in drawn.resources:  # Encounters come before the Conditions that cite them
        key = resource["subject"]["reference"].removeprefix("Patient/")
        patient = by_key[key]
        entry = {k: v for k, v in copy.deepcopy(resource).items() if k != "id"}
        kind = "recurrence" if resource["resourceType"] == "Condition" else "follow-up"
        entry["identifier"] = [patient.record_identifier(kind)]
        entry["subject"] = patient.reference()
        if "encounter" in entry:
            entry["encounter"] = {"reference": fullurls[entry["encounter"]["reference"]]}
        fullurls[f"{resource['resourceType']}/{resource['id']}"] = full_url(entry)
        entries.setdefault(key, []).append(entry)
    return entries


def _as_stored(patient: SyntheticPatient) -> list[Resource]:
    """The patient's resources as a FHIR server would return them: ids, and relative references."""
    rids = [patient.key if i == 0 else f"{patient.key}-{i}" for i in range(len(patient.resources))]
    ids = {
        full_url(r): f"{r['resourceType']}/{rid}"
        for r, rid in zip(patient.resources, rids, strict=True)
    }
    return [
        rewrite_references({**r, "id": rid}, ids)
        for r, rid in zip(patient.resources, rids, strict=True)
    ]
