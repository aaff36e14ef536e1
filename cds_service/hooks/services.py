"""The CDS services this deployment offers: one registry, keyed by service id, that builds discovery.

Each supported hook gets its own id (the CDS Hooks sandbox keys services by id, so sharing one would
hide all but the last). Scoring is hook-agnostic: every service asks for the same narrow prefetch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cds_service.gather.queries import FOLLOW_UP_ORDERS_KEY, build_prefetch
from fhir_mappings import ValueSets

#: Reverse-domain name of our organisation-specific hook (no standard note-signing hook exists).
NOTE_SIGN_HOOK = "org.example.hfs-cds.procedure-note-sign"


@dataclass(frozen=True, slots=True)
class ContextField:
    name: str
    kind: type  # str or dict
    required: bool


@dataclass(frozen=True, slots=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    context: tuple[ContextField, ...]
    prefetch: dict[str, str]
    usage_requirements: str
    hook_version: str | None = None
    #: Keys whose absence degrades the card instead of failing the call with 412 (gather.prefetch).
    optional_prefetch: frozenset[str] = frozenset()

    def discovery_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": self.prefetch,
            "usageRequirements": self.usage_requirements,
        }
        if self.hook_version:
            entry["hookVersion"] = self.hook_version
        return entry


_USER = ContextField("userId", str, True)
_PATIENT = ContextField("patientId", str, True)
_ENCOUNTER_OPT = ContextField("encounterId", str, False)
_ENCOUNTER_REQ = ContextField("encounterId", str, True)

_DESCRIPTION = (
    "Estimates the risk that hemifacial spasm recurs within 3, 6 and 12 months after CT-guided "
    "radiofrequency ablation of the facial nerve (Cox model of Fei et al., Pain Physician 2022), from "
    "the operation time and the post-ablation House-Brackmann grade, with follow-up advice."
)
_USAGE = (
    "Needs FHIR R4 Procedure, Observation and Condition data (and open ServiceRequests, to "
    "know whether follow-up is already ordered), from prefetch or from fhirServer "
    "(with fhirAuthorization, or on an allowlisted open server). Informational only; recalibrate on "
    "local patients before clinical use."
)


#: One service per hook: (id, hook, when the EHR fires it, context fields).
_SERVICES: tuple[tuple[str, str, str, tuple[ContextField, ...]], ...] = (
    (
        "hfs-rfa-recurrence-patient-view",
        "patient-view",
        "chart opened",
        (_USER, _PATIENT, _ENCOUNTER_OPT),
    ),
    (
        "hfs-rfa-recurrence-order-sign",
        "order-sign",
        "post-ablation orders signed",
        (_USER, _PATIENT, _ENCOUNTER_OPT, ContextField("draftOrders", dict, True)),
    ),
    (
        "hfs-rfa-recurrence-encounter-discharge",
        "encounter-discharge",
        "discharge",
        (_USER, _PATIENT, _ENCOUNTER_REQ),
    ),
    (
        "hfs-rfa-recurrence-note-sign",
        NOTE_SIGN_HOOK,
        "post-ablation note signed",
        (_USER, _PATIENT, _ENCOUNTER_OPT, ContextField("procedureId", str, False)),
    ),
)


def build_services(value_sets: ValueSets) -> dict[str, CdsService]:
    """The registry: service id -> service. Built once at start-up."""
    prefetch = build_prefetch(value_sets)
    return {
        service_id: CdsService(
            id=service_id,
            hook=hook,
            title=f"Hemifacial spasm recurrence risk after RFA ({when})",
            description=f"{_DESCRIPTION} Fired when: {when}.",
            context=context,
            prefetch=prefetch,
            usage_requirements=_USAGE,
            hook_version="1.0",
            optional_prefetch=frozenset({FOLLOW_UP_ORDERS_KEY}),
        )
        for service_id, hook, when, context in _SERVICES
    }


@dataclass(frozen=True, slots=True)
class HookServices:
    """What the hooks prepare once per Flask app (``app.extensions["hfs_cds_hooks"]``)."""

    services: dict[str, CdsService]
    discovery_json: str  # built once: discovery is static and called often
    app_launch_path: str | None  # the SMART app's, for the card's link; None without the app

    @classmethod
    def build(cls, value_sets: ValueSets, app_launch_path: str | None) -> HookServices:
        services = build_services(value_sets)
        discovery = {"services": [s.discovery_entry() for s in services.values()]}
        return cls(services, json.dumps(discovery, separators=(",", ":")), app_launch_path)
