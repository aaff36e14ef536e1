"""Audit records: what the service told the clinician, about whom, from which data, with which model.

:func:`audit_record_from` takes the :class:`~cds_service.assessment.Assessment` and the card the
service returned and keeps only structured facts: ids, codes, numbers and FHIR references. It
never copies text that came from the EHR (notes, narrative, names, free-text values), and it never
sees the hook request, so the ``fhirAuthorization`` token cannot reach it. Problem *messages* are
not kept either, only their stable reason codes and the resource each one points at.

What is kept and why:

- time (the assessment's ``as_of``, i.e. when the service answered), service id, hook,
  hookInstance, card uuid, indicator and summary (the sentence the clinician saw, generated from
  numbers and the model card), and the suggestion uuids (to match ``acceptedSuggestions``);
- the FHIR patient id: PHI-adjacent, but needed to answer "what did the service tell the
  clinician about this patient"; it is removed with the record by the retention purge;
- model id, version and sha256; status; tier; the risks at the report months with their
  ranges, the conditional risk, and months since the procedure;
- every input value with the resource it came from (type, id, version and the FHIR date used);
- the reason codes when the patient was not scored;
- the EHR's ``iss`` and tenant from the JWT, when known;
- the inputs key (:mod:`.inputs_key`, a hash): feedback on this card silences patient-view for
  the same inputs;
- the software version (``cds_service.__version__``): which release of the service said it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_service import __version__
from cds_service.assessment import Assessment
from cds_service.store.inputs_key import inputs_key as compute_inputs_key
from fhir_mappings import Provenance
from fhir_mappings.frozen import fast_init  # ~10 objects per card, on the request path

# Column widths (see schema.py); longer EHR-supplied identifiers are cut rather than failing a batch.
_ID = 128
_LONG = 255


@fast_init
@dataclass(frozen=True, slots=True)
class ResourceRef:
    """The FHIR resource a value came from."""

    resource_type: str
    id: str | None
    version: str | None = None
    date: str | None = None  # the FHIR date/time the mapping used, as written in the resource

    @classmethod
    def of(cls, p: Provenance) -> ResourceRef:
        return cls(p.resource_type, p.id, p.version, p.recorded)

    def to_json(self) -> dict[str, str]:
        out = {"resourceType": self.resource_type}
        if self.id is not None:
            out["id"] = self.id
        if self.version is not None:
            out["versionId"] = self.version
        if self.date is not None:
            out["date"] = self.date
        return out


@fast_init
@dataclass(frozen=True, slots=True)
class AuditInput:
    """One model input as the service used it."""

    name: str  # "procedureEnd", "operationMinutes", "houseBrackmannGrade"
    value: float | int | str
    source: ResourceRef
    coded: float | None = None  # the covariate actually scored (X1, X2)
    derived_from: str | None = None  # which element gave the value (e.g. "performedPeriod")
    hours_after_procedure: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "value": self.value}
        if self.coded is not None:
            out["coded"] = self.coded
        if self.derived_from is not None:
            out["derivedFrom"] = self.derived_from
        if self.hours_after_procedure is not None:
            out["hoursAfterProcedure"] = self.hours_after_procedure
        out["source"] = self.source.to_json()
        return out


@fast_init
@dataclass(frozen=True, slots=True)
class AuditReason:
    """Why the patient was not scored: a stable reason code and the resource concerned."""

    code: str
    source: ResourceRef | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code}
        if self.source is not None:
            out["source"] = self.source.to_json()
        return out


@fast_init
@dataclass(frozen=True, slots=True)
class AuditRisk:
    month: float
    risk: float
    low: float
    high: float
    from_month: float | None = None  # set for the conditional risk only

    def to_json(self) -> dict[str, float]:
        out = {"month": self.month, "risk": self.risk, "low": self.low, "high": self.high}
        if self.from_month is not None:
            out["fromMonth"] = self.from_month
        return out


@fast_init
@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One card the service returned, with everything needed to explain it later."""

    recorded_at: datetime
    service_id: str
    hook: str
    hook_instance: str
    card_uuid: str
    patient_id: str | None
    model_id: str
    model_version: str
    model_sha256: str
    status: str
    indicator: str
    summary: str
    tier: str | None = None
    months_since_procedure: float | None = None
    risks: tuple[AuditRisk, ...] = ()
    conditional_risk: AuditRisk | None = None
    inputs: tuple[AuditInput, ...] = ()
    reasons: tuple[AuditReason, ...] = ()
    suggestion_ids: tuple[str, ...] = ()
    issuer: str | None = None
    tenant: str | None = None
    inputs_key: str | None = None
    #: The release of this service that wrote the card (every record the service writes has it).
    software_version: str = __version__

    def to_row(self) -> dict[str, Any]:
        """The ``audit_record`` row (see :mod:`cds_service.store.schema`)."""
        return {
            "card_uuid": self.card_uuid,
            "recorded_at": self.recorded_at,
            "service_id": self.service_id,
            "hook": self.hook,
            "hook_instance": self.hook_instance,
            "patient_id": self.patient_id,
            "issuer": self.issuer,
            "tenant": self.tenant,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
            "status": self.status,
            "tier": self.tier,
            "indicator": self.indicator,
            "summary": self.summary,
            "months_since_procedure": self.months_since_procedure,
            "risks": [r.to_json() for r in self.risks],
            "conditional_risk": self.conditional_risk.to_json() if self.conditional_risk else None,
            "inputs": [i.to_json() for i in self.inputs],
            "reasons": [r.to_json() for r in self.reasons],
            "suggestion_ids": list(self.suggestion_ids),
            "inputs_key": self.inputs_key,
            "software_version": self.software_version,
        }


def audit_record_from(
    assessment: Assessment,
    card: dict[str, Any],
    *,
    service_id: str,
    hook: str,
    hook_instance: str,
    issuer: str | None = None,
    tenant: str | None = None,
    recorded_at: datetime | None = None,
    inputs_key: str | None = None,
) -> AuditRecord:
    """The audit record of one card built by ``hooks.cards.build_cards`` from ``assessment``.

    ``recorded_at`` defaults to the assessment's ``as_of`` (the moment the service assessed, which
    is "now" in the service and pinned in tests). ``card`` must carry the ``uuid`` the EHR will
    quote in feedback. ``inputs_key`` is computed when not given (the hook passes the one it
    already computed for suppression).
    """
    card_uuid = card.get("uuid")
    if not isinstance(card_uuid, str) or not card_uuid:
        raise ValueError("the card has no uuid; feedback could never be matched to it")
    a = assessment
    conditional = None
    if a.conditional is not None:
        c = a.conditional
        conditional = AuditRisk(c.to_month, c.risk, c.low, c.high, from_month=c.from_month)
    return AuditRecord(
        recorded_at=recorded_at or a.as_of,
        service_id=_clip(service_id, _ID),
        hook=_clip(hook, _ID),
        hook_instance=_clip(hook_instance, _ID),
        card_uuid=_clip(card_uuid, _ID),
        patient_id=_clip_opt(a.inputs.patient_id, _LONG),
        model_id=a.model.id,
        model_version=a.model.version,
        model_sha256=a.model.sha256,
        status=a.status.value,
        indicator=str(card.get("indicator", "info")),
        summary=_clip(str(card.get("summary", "")), _LONG),
        tier=a.estimate_tier.id if a.estimate_tier else None,
        months_since_procedure=(
            round(a.months_since_procedure, 3) if a.months_since_procedure is not None else None
        ),
        risks=tuple(AuditRisk(p.month, p.risk, p.low, p.high) for p in a.risks),
        conditional_risk=conditional,
        inputs=_inputs(a),
        reasons=tuple(
            AuditReason(p.reason.value, ResourceRef.of(p.provenance) if p.provenance else None)
            for p in a.problems
        ),
        suggestion_ids=tuple(
            s["uuid"]
            for s in card.get("suggestions", ())
            if isinstance(s, dict) and isinstance(s.get("uuid"), str)
        ),
        issuer=_clip_opt(issuer, _LONG),
        tenant=_clip_opt(tenant, _LONG),
        inputs_key=inputs_key or compute_inputs_key(a, issuer=issuer, tenant=tenant),
    )


def _inputs(a: Assessment) -> tuple[AuditInput, ...]:
    out: list[AuditInput] = []
    ablation = a.inputs.ablation
    if ablation is not None:
        out.append(
            AuditInput(
                "procedureEnd",
                ablation.ended_at.isoformat(),
                ResourceRef.of(ablation.provenance),
                derived_from=ablation.ended_at_source,
            )
        )
    ot = a.operation_time
    if ot is not None:
        out.append(
            AuditInput(
                "operationMinutes",
                round(ot.minutes, 1),
                ResourceRef.of(ot.provenance),
                coded=a.x1,
                derived_from=ot.source,
            )
        )
    hb = a.hb_grade
    if hb is not None:
        out.append(
            AuditInput(
                "houseBrackmannGrade",
                hb.grade,
                ResourceRef.of(hb.provenance),
                coded=a.x2,
                hours_after_procedure=round(hb.hours_after_procedure, 1),
            )
        )
    return tuple(out)


def _clip(value: str, limit: int) -> str:
    return value[:limit]


def _clip_opt(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None


def audit_record_from_row(row: dict[str, Any]) -> AuditRecord:
    """The record :meth:`AuditRecord.to_row` wrote (``recorded_at`` as a datetime or ISO text).

    The inverse of ``to_row``, for rows read back from the local spool (:mod:`.spool`).
    """
    recorded_at = row["recorded_at"]
    if isinstance(recorded_at, str):
        recorded_at = datetime.fromisoformat(recorded_at)
    conditional = row.get("conditional_risk")
    return AuditRecord(
        recorded_at=recorded_at,
        service_id=row["service_id"],
        hook=row["hook"],
        hook_instance=row["hook_instance"],
        card_uuid=row["card_uuid"],
        patient_id=row.get("patient_id"),
        model_id=row["model_id"],
        model_version=row["model_version"],
        model_sha256=row["model_sha256"],
        status=row["status"],
        indicator=row["indicator"],
        summary=row["summary"],
        tier=row.get("tier"),
        months_since_procedure=row.get("months_since_procedure"),
        risks=tuple(_risk(r) for r in row.get("risks") or ()),
        conditional_risk=_risk(conditional) if conditional else None,
        inputs=tuple(_input(i) for i in row.get("inputs") or ()),
        reasons=tuple(
            AuditReason(r["code"], _ref(r["source"]) if r.get("source") else None)
            for r in row.get("reasons") or ()
        ),
        suggestion_ids=tuple(row.get("suggestion_ids") or ()),
        issuer=row.get("issuer"),
        tenant=row.get("tenant"),
        inputs_key=row.get("inputs_key"),
        software_version=row["software_version"],
    )


def _risk(r: dict[str, Any]) -> AuditRisk:
    return AuditRisk(r["month"], r["risk"], r["low"], r["high"], from_month=r.get("fromMonth"))


def _ref(r: dict[str, Any]) -> ResourceRef:
    return ResourceRef(r["resourceType"], r.get("id"), r.get("versionId"), r.get("date"))


def _input(i: dict[str, Any]) -> AuditInput:
    return AuditInput(
        i["name"],
        i["value"],
        _ref(i["source"]),
        coded=i.get("coded"),
        derived_from=i.get("derivedFrom"),
        hours_after_procedure=i.get("hoursAfterProcedure"),
    )
