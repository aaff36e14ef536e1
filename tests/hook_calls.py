"""Builds CDS Hooks requests the way an EHR sends them, and posts them through a test client."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import fhir_builders as fb

Resource = dict[str, Any]

SERVICE_IDS = {
    "patient-view": "hfs-rfa-recurrence-patient-view",
    "order-sign": "hfs-rfa-recurrence-order-sign",
    "encounter-discharge": "hfs-rfa-recurrence-encounter-discharge",
    "org.example.hfs-cds.procedure-note-sign": "hfs-rfa-recurrence-note-sign",
}
PREFETCH_KEYS = {
    "Procedure": "procedures",
    "Observation": "observations",
    "Condition": "conditions",
    "ServiceRequest": "followUpOrders",  # open follow-up orders (optional key; empty: none)
}


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def recent_patient(
    *,
    days_ago: float = 20,
    minutes: float = 42,
    hb: str | int | None = "II",
    hb_hours_after: float = 20,
    patient: str = "p1",
) -> list[Resource]:
    """A scorable record relative to now: RFA ``days_ago``, HB grade ``hb_hours_after`` later."""
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
    resources = [
        fb.hfs_condition(patient=patient),
        fb.ablation_procedure(
            start=iso(end - timedelta(minutes=minutes)), end=iso(end), patient=patient
        ),
    ]
    if hb is not None:
        resources.append(
            fb.hb_observation(
                grade=hb, effective=iso(end + timedelta(hours=hb_hours_after)), patient=patient
            )
        )
    return resources


def prefetch_for(resources: Iterable[Resource]) -> dict[str, Any]:
    """Split resources into the services' prefetch keys as searchset Bundles."""
    by_key: dict[str, list[Resource]] = {key: [] for key in PREFETCH_KEYS.values()}
    for resource in resources:
        key = PREFETCH_KEYS.get(resource.get("resourceType", ""))
        if key:
            by_key[key].append(resource)
    return {key: fb.bundle(*items) for key, items in by_key.items()}


def context_for(hook: str, patient: str = "p1") -> dict[str, Any]:
    """The required context of each hook, as the CDS Hooks library defines it."""
    context: dict[str, Any] = {"userId": "Practitioner/dr1", "patientId": patient}
    if hook == "order-sign":
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": []}
    if hook == "encounter-discharge":
        context["encounterId"] = "enc1"
    return context


def hook_body(
    hook: str = "patient-view",
    resources: Iterable[Resource] = (),
    *,
    patient: str = "p1",
    prefetch: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A complete request body; ``prefetch`` overrides the one built from ``resources``."""
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context_for(hook, patient),
        "prefetch": prefetch if prefetch is not None else prefetch_for(resources),
    }
    body.update(fields)
    return body


@dataclass
class HookCaller:
    """Posts hook requests to the app under test."""

    client: FlaskClient

    def post(self, service_id: str, body: Any, **kwargs: Any) -> TestResponse:
        return self.client.post(f"/cds-services/{service_id}", json=body, **kwargs)

    def call(
        self, hook: str = "patient-view", resources: Iterable[Resource] = (), **kw: Any
    ) -> TestResponse:
        return self.post(SERVICE_IDS[hook], hook_body(hook, resources, **kw))
