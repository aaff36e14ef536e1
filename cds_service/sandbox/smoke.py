"""Fire every hook for every synthetic patient, the way an EHR would (``hfs-cds smoke``).

For each synthetic patient found on the FHIR server and each service in discovery, the smoke test

* **prefetch**: runs the service's prefetch templates against the FHIR server (as the CDS Hooks
  sandbox does) and sends the results, with ``fhirServer`` as EHRs always do;
* **fetch**: sends no prefetch, only ``fhirServer`` (and ``fhirAuthorization`` with ``--token``),
  so the service must query the FHIR server itself;

and compares each answer with the assessment computed here by the same pipeline
(:meth:`Assessor.assess`, exactly what ``hfs-cds score`` runs) over the same resources: no card
when nothing applies; otherwise the status, the model version, the procedure, the tier and the
risks at 3, 6 and 12 months to three decimals, or the reasons it was not scored. It also checks
that the local assessment is what the patient's scenario was built to produce (a stale load, e.g.
ablations that have aged beyond 12 months, shows up there). Every call carries a fresh JWT: the
service refuses replayed ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import requests

from cds_service.assessment import Assessment, Assessor, Status
from cds_service.fhir import FhirError, outcome_text
from cds_service.gather.queries import render_template
from cds_service.hooks.cards import EXTENSION_KEY
from cds_service.hooks.relevance import is_relevant
from cds_service.hooks.services import NOTE_SIGN_HOOK
from cds_service.recalibration.simulate import FOLLOW_UP_CODING
from cds_service.sandbox.fetch_hint import Reason, fetch_hint, refusal_reason
from cds_service.sandbox.fhir_http import FhirEndpoint, Interrupted, SandboxError
from cds_service.sandbox.scenarios import (
    EXPECTED_TAG_SYSTEM,
    KEY_PREFIX,
    PATIENT_IDENTIFIER_SYSTEM,
    SCENARIO_TAG_SYSTEM,
    parse_expected_code,
)
from cds_service.security.trusted_issuers import SigningKey
from fhir_mappings import Resource, resources_from_bundle

Mode = Literal["prefetch", "fetch"]
MODES: tuple[Mode, ...] = ("prefetch", "fetch")
RISK_MONTHS = (3, 6, 12)
#: Risks must agree to three decimals.
RISK_TOLERANCE = 0.0005
SMOKE_USER = "Practitioner/hfs-cds-smoke"


# -- what is on the FHIR server -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FoundPatient:
    """A synthetic patient as stored on the FHIR server."""

    id: str
    key: str
    scenario: str
    expected: str | None  # the expected-outcome tag (``scored``, ``not-scored:...``, ``no-card``)


def find_synthetic_patients(endpoint: FhirEndpoint, seed: int | None = None) -> list[FoundPatient]:
    """Every Patient with a synthetic identifier (of one seed if given), sorted by key."""
    system = quote(f"{PATIENT_IDENTIFIER_SYSTEM}|", safe="")
    prefix = f"{KEY_PREFIX}-{seed}-" if seed is not None else ""
    found: dict[str, FoundPatient] = {}
    try:
        pages = list(endpoint.pages(f"Patient?identifier={system}&_count=100"))
    except FhirError as exc:
        raise SandboxError(
            f"searching {endpoint.base}/Patient by identifier failed: {exc}"
        ) from None
    for resource in (r for page in pages for r in resources_from_bundle(page)):
        if resource.get("resourceType") != "Patient":
            continue
        keys = [
            i.get("value")
            for i in resource.get("identifier") or []
            if isinstance(i, dict) and i.get("system") == PATIENT_IDENTIFIER_SYSTEM
        ]
        key = next((k for k in keys if isinstance(k, str) and k.startswith(prefix)), None)
        if key is None or not resource.get("id"):
            continue
        tags = _tags(resource)
        found[key] = FoundPatient(
            id=str(resource["id"]),
            key=key,
            scenario=tags.get(SCENARIO_TAG_SYSTEM, "(untagged)"),
            expected=tags.get(EXPECTED_TAG_SYSTEM),
        )
    return [found[k] for k in sorted(found)]


def _tags(resource: Mapping[str, Any]) -> dict[str, str]:
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return {
        str(t.get("system")): str(t.get("code"))
        for t in tags or []
        if isinstance(t, dict) and t.get("system") and t.get("code")
    }


def run_prefetch(endpoint: FhirEndpoint, template: str) -> Resource:
    """One prefetch value: the search (all pages merged) or the resource read."""
    answer = endpoint.request("GET", template)
    if not answer.ok or answer.body is None:
        raise SandboxError(
            f"prefetch {template.split('?')[0]} failed: HTTP {answer.status}, "
            f"{answer.diagnostics()}"
        )
    body = answer.body
    if body.get("resourceType") != "Bundle":
        return body
    try:
        pages = list(endpoint.pages(body))
    except FhirError as exc:
        raise SandboxError(f"prefetch {template.split('?')[0]} failed: {exc}") from None
    entries = [e for page in pages for e in page.get("entry") or [] if isinstance(e, dict)]
    merged: Resource = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
    if entries:
        merged["entry"] = entries
    return merged


def prefetch_resources(prefetch: Mapping[str, Any]) -> list[Resource]:
    """The resources of all prefetch values, each once (by type and id)."""
    seen: set[tuple[str, str]] = set()
    out: list[Resource] = []
    for value in prefetch.values():
        if not isinstance(value, dict):
            continue
        items = (
            [e.get("resource") for e in value.get("entry") or [] if isinstance(e, dict)]
            if value.get("resourceType") == "Bundle"
            else [value]
        )
        for resource in items:
            if not isinstance(resource, dict) or resource.get("resourceType") == "OperationOutcome":
                continue
            key = (str(resource.get("resourceType")), str(resource.get("id")))
            if key not in seen:
                seen.add(key)
                out.append(resource)
    return out


# -- the service ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    hook: str
    url: str
    prefetch: dict[str, str]


class CdsClient:
    """Calls discovery and services with a fresh JWT each time."""

    def __init__(self, discovery_url: str, signer: SigningKey, timeout: float) -> None:
        parts = urlsplit(discovery_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SandboxError(f"--service {discovery_url!r} is not an http(s) URL")
        url = discovery_url.rstrip("/")
        self.discovery_url = url if url.endswith("/cds-services") else f"{url}/cds-services"
        self.signer = signer
        self.timeout = timeout
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def _send(self, method: str, url: str, body: Any = None) -> requests.Response:
        headers = {
            "Accept": "application/json",
            "Authorization": f"Bearer {self.signer.sign(url)}",
        }
        try:
            return self.session.request(
                method, url, json=body, headers=headers, timeout=self.timeout, allow_redirects=False
            )
        except requests.Timeout:
            raise SandboxError(
                f"the CDS service did not answer {method} {url} within {self.timeout:g} s"
            ) from None
        except requests.ConnectionError:
            raise SandboxError(
                f"cannot reach the CDS service at {url}; check --service and that it runs"
            ) from None

    def discover(self) -> list[Service]:
        response = self._send("GET", self.discovery_url)
        if response.status_code == 401:
            raise SandboxError(
                f"discovery at {self.discovery_url} answered 401: the service does not trust the "
                "JWT. A service in development mode (CDS_DEV_MODE=1) trusts the default signer; "
                "otherwise pass --jwt-key and --iss of an issuer in its CDS_TRUSTED_ISSUERS_FILE, "
                "and check that CDS_PUBLIC_BASE_URL matches the URL given here"
            )
        data = _json(response)
        services = data.get("services") if isinstance(data, dict) else None
        if response.status_code != 200 or not isinstance(services, list):
            raise SandboxError(
                f"discovery at {self.discovery_url} answered HTTP {response.status_code} without "
                "a 'services' array: is this a CDS Hooks discovery URL?"
            )
        out = []
        for entry in services:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                prefetch = entry.get("prefetch") if isinstance(entry.get("prefetch"), dict) else {}
                out.append(
                    Service(
                        id=entry["id"],
                        hook=str(entry.get("hook")),
                        url=f"{self.discovery_url}/{quote(entry['id'], safe='')}",
                        prefetch={str(k): str(v) for k, v in (prefetch or {}).items()},
                    )
                )
        if not out:
            raise SandboxError(f"discovery at {self.discovery_url} lists no services")
        return out

    def call(self, service: Service, body: Mapping[str, Any]) -> tuple[int, Any]:
        response = self._send("POST", service.url, body)
        return response.status_code, _json(response)


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def hook_context(hook: str, patient_id: str) -> dict[str, Any]:
    """The context an EHR sends for each hook (required fields, realistic values)."""
    context: dict[str, Any] = {"userId": SMOKE_USER, "patientId": patient_id}
    if hook == "order-sign":
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {
                    "resource": {
                        "resourceType": "ServiceRequest",
                        "id": "hfs-cds-smoke-follow-up",
                        "status": "draft",
                        "intent": "order",
                        # A follow-up order: order-sign answers for it at any time after the
                        # ablation (an unrelated order past the post-ablation window gets none).
                        "code": {
                            "coding": [FOLLOW_UP_CODING],
                            "text": "Facial nerve function review after RFA",
                        },
                        "subject": {"reference": f"Patient/{patient_id}"},
                    }
                }
            ],
        }
    if hook == "encounter-discharge":
        context["encounterId"] = "hfs-cds-smoke-encounter"
    return context


# -- comparing ------------------------------------------------------------------------------------


def compare(expected: Assessment, status: int, answer: Any, relevant: bool = True) -> list[str]:
    """What differs between the service's answer and the locally computed assessment.

    ``relevant`` is False when the hook call is not one the service answers (e.g. a discharge
    long after the ablation): then no card is expected.
    """
    if status != 200:
        return [f"HTTP {status}: {outcome_text(answer)}"]
    cards = answer.get("cards") if isinstance(answer, dict) else None
    if not isinstance(cards, list):
        return ["the answer has no 'cards' array"]
    if expected.status is Status.NOT_APPLICABLE or not relevant:
        return [] if not cards else [f"{len(cards)} card(s) where no card was expected"]
    if len(cards) != 1:
        return [f"{len(cards)} cards where one {expected.status.value} card was expected"]
    card = cards[0]
    ext = (card.get("extension") or {}).get(EXTENSION_KEY) if isinstance(card, dict) else None
    if not isinstance(ext, dict):
        return [f"the card has no extension {EXTENSION_KEY!r}"]
    problems: list[str] = []
    model = ext.get("model") or {}
    if model.get("sha256") != expected.model.sha256:
        problems.append(
            f"model card differs: the service runs {model.get('id')} {model.get('version')} "
            f"(sha256 {str(model.get('sha256'))[:12]}…), smoke assesses with "
            f"{expected.model.sha256[:12]}… (give smoke the service's CDS_MODEL_CARD)"
        )
    if ext.get("status") != expected.status.value:
        problems.append(f"status {ext.get('status')} != expected {expected.status.value}")
        return problems
    ablation = expected.inputs.ablation
    if ablation is not None and (ext.get("procedure") or {}).get("id") != ablation.provenance.id:
        problems.append(
            f"procedure {(ext.get('procedure') or {}).get('id')} != expected {ablation.provenance.id}"
        )
    if expected.status is Status.SCORED:
        assert expected.estimate_tier is not None
        if ext.get("tier") != expected.estimate_tier.id:
            problems.append(f"tier {ext.get('tier')} != expected {expected.estimate_tier.id}")
        if card.get("indicator") != expected.estimate_tier.indicator:
            problems.append(
                f"indicator {card.get('indicator')} != expected {expected.estimate_tier.indicator}"
            )
        got = {r.get("month"): r.get("risk") for r in ext.get("risks") or [] if isinstance(r, dict)}
        for month in RISK_MONTHS:
            want = expected.risk_at(month).risk
            have = got.get(month)
            if not isinstance(have, int | float) or abs(have - want) >= RISK_TOLERANCE:
                problems.append(f"risk at {month} months {have} != expected {want:.3f}")
    else:
        have_reasons = sorted({str(p.get("reason")) for p in ext.get("problems") or []})
        want_reasons = sorted({p.reason.value for p in expected.problems})
        if have_reasons != want_reasons:
            problems.append(f"reasons {have_reasons} != expected {want_reasons}")
    return problems


def scenario_problems(expected_code: str | None, assessment: Assessment) -> list[str]:
    """Whether the local assessment is what the patient's scenario was built to give."""
    if not expected_code:
        return []
    try:
        status, reasons = parse_expected_code(expected_code)
    except ValueError:
        return [f"unknown expected-outcome tag {expected_code!r}"]
    actual = {
        Status.SCORED: "scored",
        Status.NOT_SCORED: "not-scored",
        Status.NOT_APPLICABLE: "no-card",
    }[assessment.status]
    got_reasons = frozenset(p.reason.value for p in assessment.problems)
    if actual != status or (status == "not-scored" and got_reasons != reasons):
        shown = actual + (f" ({', '.join(sorted(got_reasons))})" if got_reasons else "")
        return [
            f"the data on the server now assesses as {shown}, not the scenario's {expected_code} "
            "(data loaded long ago ages: load it again)"
        ]
    return []


# -- running --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One patient and service: what the card said, and each mode's verdict."""

    patient: FoundPatient
    hook: str
    card: str = ""
    risks: str = ""
    verdicts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: Why the service refused the fetch-mode call, when a setting of the service was the reason.
    fetch_refusal: Reason | None = None


@dataclass
class SmokeResult:
    fhir_base: str
    discovery_url: str
    modes: tuple[Mode, ...]
    services: list[Service]
    rows: list[Row] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out = {"OK": 0, "MISMATCH": 0, "ERROR": 0}
        for row in self.rows:
            for verdict in row.verdicts.values():
                out[verdict] += 1
        return out

    @property
    def ok(self) -> bool:
        counts = self.counts
        return bool(self.rows) and counts["MISMATCH"] == 0 and counts["ERROR"] == 0

    def render(self) -> str:
        patients = {row.patient.key for row in self.rows}
        header = [
            "PATIENT",
            "SCENARIO",
            "HOOK",
            "CARD",
            "RISK 3/6/12 MO",
            *map(str.upper, self.modes),
        ]
        table = [header] + [
            [
                row.patient.key,
                row.patient.scenario,
                _short_hook(row.hook),
                row.card,
                row.risks,
                *(row.verdicts.get(m, "-") for m in self.modes),
            ]
            for row in self.rows
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines = [
            f"hfs-cds smoke: FHIR {self.fhir_base}, service {self.discovery_url}",
            f"{len(patients)} synthetic patients x {len(self.services)} services x "
            f"{len(self.modes)} modes ({', '.join(self.modes)})",
            "",
        ]
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in table
        ]
        details = [
            f"- {row.patient.key} ({row.patient.scenario}) {_short_hook(row.hook)}: {problem}"
            for row in self.rows
            for problem in row.problems
        ]
        if details:
            lines += ["", "Problems:", *details]
        scenarios = sorted({row.patient.scenario for row in self.rows})
        counts = self.counts
        lines += [
            "",
            f"Scenarios covered ({len(scenarios)}): {', '.join(scenarios)}",
            f"Result: {sum(counts.values())} calls, {counts['OK']} OK, "
            f"{counts['MISMATCH']} MISMATCH, {counts['ERROR']} ERROR",
        ]
        hint = self.hint()
        if hint:
            lines.append(hint)
        return "\n".join(lines)

    def hint(self) -> str | None:
        """One line on what to set, when every fetch-mode call failed for one setting of the
        service (:mod:`~cds_service.sandbox.fetch_hint`)."""
        if "fetch" not in self.modes or not self.rows:
            return None
        return fetch_hint((row.fetch_refusal for row in self.rows), self.fhir_base)


def _short_hook(hook: str) -> str:
    """``org.example.hfs-cds.procedure-note-sign`` -> ``procedure-note-sign``."""
    return hook.rsplit(".", 1)[-1] if "." in hook else hook


def run_smoke(
    endpoint: FhirEndpoint,
    client: CdsClient,
    assessor: Assessor,
    *,
    hooks: Sequence[str] = (),
    modes: Sequence[Mode] = MODES,
    seed: int | None = None,
    patient_ids: Sequence[str] = (),
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Callable[[int, int], None] | None = None,
) -> SmokeResult:
    """Run the smoke test; setup problems raise :class:`SandboxError`, call problems become rows.

    ``progress(done, total)`` hears of each patient done; Ctrl-C raises :class:`Interrupted` with
    the table of the patients done until then."""
    services = client.discover()
    if hooks:
        # A hook may be named in full or by its last part (``procedure-note-sign``).
        names = {s.hook: {s.hook, _short_hook(s.hook)} for s in services}
        unknown = [h for h in hooks if not any(h in n for n in names.values())]
        if unknown:
            raise SandboxError(
                f"the service offers no {', '.join(unknown)} hook (it offers "
                f"{', '.join(sorted(names))})"
            )
        services = [s for s in services if names[s.hook] & set(hooks)]
    patients = find_synthetic_patients(endpoint, seed)
    if patient_ids:
        patients = [p for p in patients if p.id in patient_ids or p.key in patient_ids]
    if not patients:
        raise SandboxError(
            f"no synthetic patients on {endpoint.base}"
            + (f" for seed {seed}" if seed is not None else "")
            + ": load them first with `hfs-cds load --fhir ...`"
        )
    result = SmokeResult(endpoint.base, client.discovery_url, tuple(modes), services)
    done = 0
    try:
        for patient in patients:
            result.rows += _smoke_patient(
                endpoint, client, assessor, services, patient, modes, clock
            )
            done += 1
            if progress is not None:
                progress(done, len(patients))
    except KeyboardInterrupt as stop:
        stopped = f"Interrupted after {done} of {len(patients)} patients"
        raise Interrupted(f"{result.render()}\n{stopped}") from stop
    return result


def _smoke_patient(
    endpoint: FhirEndpoint,
    client: CdsClient,
    assessor: Assessor,
    services: Iterable[Service],
    patient: FoundPatient,
    modes: Sequence[Mode],
    clock: Callable[[], datetime],
) -> list[Row]:
    rows: list[Row] = []
    fetched: dict[str, Resource] = {}  # rendered template -> value (services share templates)
    for service in services:
        row = Row(patient, service.hook)
        rows.append(row)
        context = hook_context(service.hook, patient.id)
        try:
            prefetch: dict[str, Any] = {}
            for key, template in service.prefetch.items():
                rendered = render_template(template, context)
                if rendered is None:
                    continue
                if rendered not in fetched:
                    fetched[rendered] = run_prefetch(endpoint, rendered)
                prefetch[key] = fetched[rendered]
        except SandboxError as exc:
            row.problems.append(str(exc))
            row.verdicts = dict.fromkeys(modes, "ERROR")
            continue
        now = clock()
        expected = assessor.assess(prefetch_resources(prefetch), patient.id, as_of=now)
        ablation = expected.inputs.ablation
        if service.hook == NOTE_SIGN_HOOK and ablation is not None and ablation.provenance.id:
            context = {**context, "procedureId": ablation.provenance.id}  # the note documents it
        relevant = is_relevant(
            service.hook,
            context,
            ablation,
            now,
            assessor.card.alerting.post_ablation_window_days,
            assessor.value_sets.follow_up_order,
        )
        drift = scenario_problems(patient.expected, expected)
        row.problems += drift
        for mode in modes:
            body: dict[str, Any] = {
                "hook": service.hook,
                "hookInstance": str(uuid.uuid4()),
                "fhirServer": endpoint.base,
                "context": context,
            }
            if endpoint.token:
                body["fhirAuthorization"] = {
                    "access_token": endpoint.token,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "patient/Procedure.read patient/Observation.read "
                    "patient/Condition.read",
                    "subject": "hfs-cds-smoke",
                    "patient": patient.id,
                }
            if mode == "prefetch":
                body["prefetch"] = prefetch
            try:
                status, answer = client.call(service, body)
            except SandboxError as exc:
                row.verdicts[mode] = "ERROR"
                row.problems.append(f"{mode}: {exc}")
                continue
            if mode == "fetch" and status != 200:
                row.fetch_refusal = refusal_reason(status, answer)
            differences = compare(expected, status, answer, relevant)
            if status != 200:
                row.verdicts[mode] = "ERROR"
            elif differences or drift:
                row.verdicts[mode] = "MISMATCH"
            else:
                row.verdicts[mode] = "OK"
            row.problems += [f"{mode}: {d}" for d in differences]
            if status == 200 and not row.card:
                row.card, row.risks = _describe(answer)
    return rows


def _describe(answer: Any) -> tuple[str, str]:
    """A short card summary and the risks at 3/6/12 months, for the table."""
    cards = answer.get("cards") if isinstance(answer, dict) else None
    if not cards:
        return "(no card)", "-"
    card = cards[0] if isinstance(cards[0], dict) else {}
    summary = str(card.get("summary", ""))
    for prefix in (
        "Hemifacial spasm recurrence risk after RFA: ",
        "HFS recurrence risk after RFA ",
    ):
        summary = summary.removeprefix(prefix)
    summary = f"{card.get('indicator', '?')}: {summary}"
    ext = (card.get("extension") or {}).get(EXTENSION_KEY) or {}
    reasons = sorted(
        {str(p.get("reason")) for p in ext.get("problems") or [] if isinstance(p, dict)}
    )
    if reasons:
        summary += f" [{', '.join(reasons)}]"
    risks = {r.get("month"): r.get("risk") for r in ext.get("risks") or [] if isinstance(r, dict)}
    if not risks:
        return summary, "-"
    shown = [_percent(risks.get(m)) for m in RISK_MONTHS]
    return summary, " / ".join(shown) + " %"


def _percent(value: Any) -> str:
    return f"{value * 100:.1f}" if isinstance(value, int | float) else "?"


__all__ = [
    "MODES",
    "CdsClient",
    "FoundPatient",
    "Row",
    "Service",
    "SmokeResult",
    "compare",
    "find_synthetic_patients",
    "hook_context",
    "prefetch_resources",
    "run_prefetch",
    "run_smoke",
    "scenario_problems",
]
