"""The "inputs key" of a card: what must be unchanged for feedback on it to silence the next one.

patient-view stays silent after a clinician acted on a card *for the same inputs*
(clinical-presentation.md §4). The key is a SHA-256 over everything the card was derived from:

- the EHR (issuer and tenant: patient ids are unique only within one EHR) and the patient id;
- the model (id and version: a new model may say something new);
- the status and, per input (ablation, operation time, House-Brackmann grade), the source resource's
  type, id and version *and* the value derived from it, so a corrected grade counts as new even
  when the EHR sends no ``meta.versionId``;
- the reason codes (and resources) when the patient was not scored, so e.g. a recurrence recorded
  later gives a new card at once.

Only the hash is stored (64 hex characters), on the audit record and copied onto the card's
feedback (where the hook path reads it); it reveals nothing by itself.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from cds_service.assessment import Assessment
from fhir_mappings import Provenance

_LONG = 255


def inputs_key(assessment: Assessment, *, issuer: str | None, tenant: str | None) -> str:
    """The hex SHA-256 identifying the assessment's inputs for this EHR and patient."""
    a = assessment
    parts: list[Any] = [
        "hfs-cds/inputs/1",  # bump when the parts change, so old keys never match new ones
        (issuer or "")[:_LONG],  # as the audit and feedback rows keep them
        (tenant or "")[:_LONG],
        a.inputs.patient_id or "",
        a.model.id,
        a.model.version,
        a.status.value,
    ]
    ablation, ot, hb = a.inputs.ablation, a.operation_time, a.hb_grade
    parts.append(_source(ablation.provenance, ablation.ended_at.isoformat()) if ablation else None)
    parts.append(_source(ot.provenance, round(ot.minutes, 1)) if ot else None)
    parts.append(_source(hb.provenance, hb.grade) if hb else None)
    problems = [
        [p.reason.value, _source(p.provenance, None) if p.provenance else None] for p in a.problems
    ]
    parts.append(sorted(problems, key=orjson.dumps))  # order-independent
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()


def _source(p: Provenance, value: object) -> list[Any]:
    return [p.resource_type, p.id, p.version, p.recorded, value]
