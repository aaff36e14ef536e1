"""The example set: CDS Hooks requests, a feedback body and a Bundle, dated relative to a day.

The patients come from the synthetic catalogue (:mod:`cds_service.sandbox.scenarios`), stored as a
FHIR server would store them (:func:`~cds_service.sandbox.bundles.stored_resources`), so the
examples are the same records ``hfs-cds synth`` and ``make sandbox`` use, with the same ids.

* The **scored** patient is the catalogue's typical record (``typical-coded-hb``). Its records are
  moved in time so that the ablation ended :data:`ABLATION_DAYS_AGO` days before ``today``: then
  every hook has something to say, encounter-discharge included (it answers only within the model
  card's post-ablation window). The move keeps every random draw (duration, grade, times): the
  catalogue draws the same values whatever day it is anchored to.
* The **not-scored** patient (``hb-iv``) gets the explanatory card: a House-Brackmann grade
  outside the model.

Deterministic: the same ``today``, value sets and model card give the same files byte for byte.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final, Literal

from cds_service.hooks.services import NOTE_SIGN_HOOK, CdsService, build_services
from cds_service.model import ModelCard
from cds_service.sandbox.bundles import stored_resources
from cds_service.sandbox.scenarios import (
    DEFAULT_SEED,
    SCENARIOS,
    SyntheticPatient,
    build_bundle,
    synthetic_patients,
)
from cds_service.sandbox.smoke import hook_context
from cds_service.store.feedback import OVERRIDE_REASON_SYSTEM, OVERRIDE_REASONS
from fhir_mappings import Resource, ValueSets

#: The catalogue's scenarios behind the two example patients.
SCORED_SCENARIO: Final = "typical-coded-hb"
NOT_SCORED_SCENARIO: Final = "hb-iv"
#: Days between the scored patient's ablation and ``today``: recent enough for encounter-discharge
#: (the packaged window is 7 days), old enough that every record, in any of the catalogue's time
#: zones, lies before midnight UTC starting ``today``.
ABLATION_DAYS_AGO: Final = 3
#: The EHR the prefetch requests come from (a placeholder; nothing is fetched from it).
EHR_FHIR_SERVER: Final = "https://ehr.example.org/fhir"
EXAMPLE_USER: Final = "Practitioner/example-clinician"
#: What a reader replaces before sending the feedback and fetch-mode examples.
CARD_PLACEHOLDER: Final = "REPLACE-WITH-CARD-UUID"
PATIENT_PLACEHOLDER: Final = "REPLACE-WITH-PATIENT-ID"
TOKEN_PLACEHOLDER: Final = "REPLACE-WITH-ACCESS-TOKEN"
FETCH_FHIR_PLACEHOLDER: Final = "https://fhir.example.org/r4"
INDEX_NAME: Final = "README.txt"
#: hookInstance values: UUIDs derived from the day and the file, so the files are reproducible.
_INSTANCE_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://hfs-cds.example.org/examples")

Expect = Literal["scored", "not-scored"]
Kind = Literal["hook", "feedback", "fetch", "bundle"]


@dataclass(frozen=True, slots=True)
class ExampleFile:
    """One file of the set and what it is for."""

    name: str
    kind: Kind
    what: str  # one line for the index
    document: Resource
    service_id: str | None = None  # where a hook request or feedback is posted
    #: The card a hook request gets on its day (None: not a prefetch-filled hook request).
    expect: Expect | None = None

    @property
    def text(self) -> str:
        return json.dumps(self.document, indent=2) + "\n"


@dataclass(frozen=True, slots=True)
class ExampleSet:
    """The files, and the dates the index names."""

    today: date
    files: tuple[ExampleFile, ...]
    patient_id: str  # the risk card's patient (its business identifier value, as synth writes)
    ablation_ended: date  # the scored patient's ablation (local date)
    discharge_until: date  # encounter-discharge answers with a card until this day
    scored_until: date  # the other hooks until about this day (the model's horizon)

    def hook_requests(self) -> list[ExampleFile]:
        """The prefetch-filled hook requests, each with the card it should get."""
        return [f for f in self.files if f.expect is not None]

    def rendered(self) -> dict[str, str]:
        """File name -> text, the index (README.txt) included: what ``--out`` writes."""
        out = {f.name: f.text for f in self.files}
        out[INDEX_NAME] = render_index(self)
        return out


def build_examples(today: date, value_sets: ValueSets, card: ModelCard) -> ExampleSet:
    """The example set for ``today`` with these value sets and model card."""
    services = {s.hook: s for s in build_services(value_sets).values()}
    scored, not_scored = _patients(today, value_sets)
    scored_resources = stored_resources(build_bundle([scored]))
    other_resources = stored_resources(build_bundle([not_scored]))
    patient_id = _patient_id(scored_resources)
    ablation_id = _ablation_id(scored_resources)
    assert scored.index_ablation_end is not None  # the typical record has one ablation
    ablation_ended = scored.index_ablation_end.date()

    def hook_request(
        name: str, hook: str, what: str, resources: list[Resource], expect: Expect
    ) -> ExampleFile:
        service = services[hook]
        subject = _patient_id(resources)
        body: Resource = {
            "hook": hook,
            "hookInstance": str(uuid.uuid5(_INSTANCE_NAMESPACE, f"{today}/{name}")),
            "fhirServer": EHR_FHIR_SERVER,
            "context": _context(hook, subject, ablation_id),
            "prefetch": _prefetch(service, resources),
        }
        return ExampleFile(name, "hook", what, body, service.id, expect)

    view = services["patient-view"]
    files = (
        hook_request(
            "patient-view.json",
            "patient-view",
            "chart opened; prefetch filled: the risk card",
            scored_resources,
            "scored",
        ),
        hook_request(
            "order-sign.json",
            "order-sign",
            "a follow-up order being signed; prefetch filled: the risk card",
            scored_resources,
            "scored",
        ),
        hook_request(
            "encounter-discharge.json",
            "encounter-discharge",
            "discharge after the ablation; prefetch filled: the risk card",
            scored_resources,
            "scored",
        ),
        hook_request(
            "note-sign.json",
            NOTE_SIGN_HOOK,
            "the ablation's procedure note signed (custom hook); prefetch filled: the risk card",
            scored_resources,
            "scored",
        ),
        hook_request(
            "patient-view-not-scored.json",
            "patient-view",
            "chart opened for a patient with House-Brackmann IV: the explanatory card",
            other_resources,
            "not-scored",
        ),
        ExampleFile(
            "feedback.json",
            "feedback",
            f"CDS Hooks feedback overriding a patient-view card (replace {CARD_PLACEHOLDER})",
            _feedback(today),
            view.id,
        ),
        ExampleFile(
            "fetch-patient-view.json",
            "fetch",
            "patient-view without prefetch: the service fetches from fhirServer (placeholders)",
            _fetch_request(today, view),
            view.id,
        ),
        ExampleFile(
            "bundle.json",
            "bundle",
            f"the risk card's patient as a FHIR Bundle, for hfs-cds score (Patient/{patient_id})",
            {"resourceType": "Bundle", "type": "collection", "entry": _entries(scored_resources)},
        ),
    )
    horizon = timedelta(days=round(card.horizon_months * 365.25 / 12))
    return ExampleSet(
        today=today,
        files=files,
        patient_id=patient_id,
        ablation_ended=ablation_ended,
        discharge_until=ablation_ended + timedelta(days=card.alerting.post_ablation_window_days),
        scored_until=ablation_ended + horizon,
    )


# -- the patients ---------------------------------------------------------------------------------


def _patients(today: date, value_sets: ValueSets) -> tuple[SyntheticPatient, SyntheticPatient]:
    """The scored patient (its ablation moved to :data:`ABLATION_DAYS_AGO` days before ``today``)
    and the not-scored one, from the catalogue of the default seed."""
    names = [scenario.name for scenario, _ in SCENARIOS]
    scored_at, other_at = names.index(SCORED_SCENARIO), names.index(NOT_SCORED_SCENARIO)
    catalogue = synthetic_patients(DEFAULT_SEED, max(scored_at, other_at) + 1, today, value_sets)
    ended = catalogue[scored_at].index_ablation_end
    assert ended is not None  # a scored scenario has a completed ablation
    anchor = today + timedelta(days=(today - ended.date()).days - ABLATION_DAYS_AGO)
    moved = synthetic_patients(DEFAULT_SEED, scored_at + 1, anchor, value_sets)[scored_at]
    return moved, catalogue[other_at]


def _patient_id(resources: Sequence[Resource]) -> str:
    return next(str(r["id"]) for r in resources if r.get("resourceType") == "Patient")


def _ablation_id(resources: Sequence[Resource]) -> str:
    """The completed ablation's id (the typical record has exactly one Procedure)."""
    return next(
        str(r["id"])
        for r in resources
        if r.get("resourceType") == "Procedure" and r.get("status") == "completed"
    )


# -- the requests ---------------------------------------------------------------------------------


def _context(hook: str, patient_id: str, ablation_id: str) -> dict[str, Any]:
    """The context an EHR sends (the smoke test's), with an example clinician and encounter."""
    context = deepcopy(hook_context(hook, patient_id))
    context["userId"] = EXAMPLE_USER
    if "encounterId" in context:
        context["encounterId"] = "example-discharge-encounter"
    for entry in (context.get("draftOrders") or {}).get("entry") or []:
        entry["resource"]["id"] = "example-follow-up-order"
    if hook == NOTE_SIGN_HOOK:
        context["procedureId"] = ablation_id  # the note documents this ablation
    return context


def _prefetch(service: CdsService, resources: Sequence[Resource]) -> dict[str, Resource]:
    """What an EHR's FHIR server answers to each of the service's prefetch templates: the
    patient's resources of the template's type (the synthetic records all carry codes from the
    value sets the templates search for)."""
    out: dict[str, Resource] = {}
    for key, template in service.prefetch.items():
        kind = template.split("?", 1)[0].split("/", 1)[0]
        matches = [r for r in resources if r.get("resourceType") == kind]
        if "?" not in template:  # a read: the resource itself
            if matches:
                out[key] = matches[0]
            continue
        bundle: Resource = {"resourceType": "Bundle", "type": "searchset", "total": len(matches)}
        if matches:
            bundle["entry"] = [{**e, "search": {"mode": "match"}} for e in _entries(matches)]
        out[key] = bundle
    return out


def _entries(resources: Sequence[Resource]) -> list[Resource]:
    return [
        {"fullUrl": f"{EHR_FHIR_SERVER}/{r['resourceType']}/{r['id']}", "resource": r}
        for r in resources
    ]


def _feedback(today: date) -> Resource:
    """An ``overridden`` outcome with one of the card's own override reasons (CDS Hooks 2.0)."""
    code, display = OVERRIDE_REASONS[0]
    return {
        "feedback": [
            {
                "card": CARD_PLACEHOLDER,
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"system": OVERRIDE_REASON_SYSTEM, "code": code, "display": display}
                },
                "outcomeTimestamp": f"{today.isoformat()}T00:00:00Z",
            }
        ]
    }


def _fetch_request(today: date, service: CdsService) -> Resource:
    """No prefetch: the service queries ``fhirServer`` itself, with the EHR's token."""
    return {
        "hook": service.hook,
        "hookInstance": str(uuid.uuid5(_INSTANCE_NAMESPACE, f"{today}/fetch")),
        "fhirServer": FETCH_FHIR_PLACEHOLDER,
        "fhirAuthorization": {
            "access_token": TOKEN_PLACEHOLDER,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/Procedure.read patient/Observation.read patient/Condition.read "
            "patient/ServiceRequest.read",
            "subject": "example-ehr",
            "patient": PATIENT_PLACEHOLDER,
        },
        "context": {"userId": EXAMPLE_USER, "patientId": PATIENT_PLACEHOLDER},
    }


# -- the index ------------------------------------------------------------------------------------


def render_index(examples: ExampleSet) -> str:
    """README.txt: what each file is, and the command or curl line that sends it."""
    files = examples.files
    by_kind: Mapping[str, list[ExampleFile]] = {
        kind: [f for f in files if f.kind == kind] for kind in ("hook", "feedback", "fetch")
    }
    width = max(len(f.name) for f in files)
    feedback = by_kind["feedback"][0]
    fetch = by_kind["fetch"][0]
    view = next(f for f in by_kind["hook"] if f.name == "patient-view.json")
    bundle = next(f for f in files if f.kind == "bundle")
    lines = [
        f"hfs-cds example requests, dated relative to {examples.today.isoformat()}",
        f"(written by: hfs-cds examples --today {examples.today.isoformat()} --out DIR)",
        "",
        *(f"  {f.name.ljust(width)}  {f.what}" for f in files),
        "",
        "They age. The risk card's ablation ended on "
        f"{examples.ablation_ended.isoformat()}: encounter-discharge answers with",
        f"a card until {examples.discharge_until.isoformat()}, the other hooks until about "
        f"{examples.scored_until.isoformat()} (the model's horizon).",
        'After that the service answers {"cards": []}; write a fresh set with',
        "hfs-cds examples --out DIR (dated from today).",
        "",
        "See the cards as an EHR would show them (in process: no service needed; prints the",
        "cards and writes a self-contained HTML page):",
        "",
        f"  .venv/bin/hfs-cds preview $DIR/{view.name} --out /tmp/card.html",
        f"  .venv/bin/hfs-cds preview $DIR/{view.name} --service $BASE   # a running service",
        "",
        "Send them with curl to the service of `make run` (development mode trusts",
        "hfs-cds dev-token), from the repository root:",
        "",
        "  BASE=http://127.0.0.1:${PORT:-8080}",
        "  DIR=/tmp/hfs-examples                     # the folder holding these files",
        "  post() {  # post PATH FILE: one call, with a fresh JWT for that URL",
        '    curl -sS --fail-with-body -H "Authorization: Bearer $(.venv/bin/hfs-cds dev-token \\',
        '         --url "$BASE$1")" -H "Content-Type: application/json" -d @"$2" "$BASE$1"',
        "  }",
        *(f"  post /cds-services/{f.service_id} $DIR/{f.name}" for f in by_kind["hook"]),
        "",
        "Feedback must name a card this service gave to the same EHR (card uuids are random;",
        "any other is refused with 422). Take the uuid from a patient-view answer:",
        "",
        f"  CARD=$(post /cds-services/{view.service_id} $DIR/{view.name} | jq -r '.cards[0].uuid')",
        f'  sed "s/{CARD_PLACEHOLDER}/$CARD/" $DIR/{feedback.name} > /tmp/feedback.json',
        f"  post /cds-services/{feedback.service_id}/feedback /tmp/feedback.json",
        "",
        'After that feedback, patient-view stays silent ({"cards": []}) for this patient and these',
        "inputs for the model card's suppression period (30 days in the packaged card): feedback",
        "means the clinician has seen it. Other hooks still answer.",
        "",
        f"Fetch mode ({fetch.name}): the service queries the FHIR server itself. Load the",
        "synthetic patients (make sandbox does, or hfs-cds load --fhir $FHIR), put the server in",
        "CDS_FHIR_ALLOWLIST (make sandbox does), find the typical patient's server id, and fill in",
        "the placeholders.",
        "For an open server (make sandbox, CDS_FHIR_FETCH_WITHOUT_TOKEN=1) drop fhirAuthorization;",
        f"otherwise replace {TOKEN_PLACEHOLDER} with a token the server accepts:",
        "",
        "  FHIR=http://127.0.0.1:8090/fhir           # make sandbox's FHIR server, or yours",
        '  ID=$(curl -sS "$FHIR/Patient?identifier=https://hfs-cds.example.org/fhir/sid/'
        f'synthetic-patient%7C{examples.patient_id}" \\',
        "       | jq -r '.entry[0].resource.id')",
        '  jq --arg fhir "$FHIR" --arg id "$ID" \'.fhirServer = $fhir | .context.patientId = $id',
        f"      | del(.fhirAuthorization)' $DIR/{fetch.name} > /tmp/fetch.json",
        f"  post /cds-services/{fetch.service_id} /tmp/fetch.json",
        "  .venv/bin/hfs-cds preview /tmp/fetch.json --service $BASE   # the same, as cards",
        "",
        "The same patient offline (the assessment the risk card shows):",
        "",
        f"  .venv/bin/hfs-cds score $DIR/{bundle.name}",
        "",
    ]
    return "\n".join(lines)
