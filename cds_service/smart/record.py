"""The patient's record for the risk page: the assessment's FHIR queries, then assess().

The queries are gather's (``assessment_queries``: the CDS services' prefetch templates without the
card's follow-up-orders search) filled with the patient in context, plus a read of the Patient for
the banner, all run concurrently by the shared
:class:`~cds_service.fhir.FhirClient` (allowlisted, time-bounded, no redirects).
Nothing here maps or scores: :meth:`Assessor.assess` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from cds_service.assessment import Assessment, Assessor
from cds_service.fhir import FhirClient, FhirError
from cds_service.gather.app_context import CardReference
from cds_service.gather.queries import assessment_queries, fill_template
from cds_service.smart.errors import Failure, SmartError
from fhir_mappings import Resource


class FhirUnauthorized(Exception):
    """The FHIR server answered 401 or 403 (the token was refused)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class PatientBanner:
    """What the banner shows; only from the Patient resource, escaped by the template."""

    id: str
    name: str | None
    birth_date: str | None
    gender: str | None
    identifier: str | None  # the medical record number when one is marked, else the first


@dataclass(frozen=True, slots=True)
class PatientRecord:
    banner: PatientBanner
    assessment: Assessment
    resources: tuple[Resource, ...] = ()  # what the assessment read (for the card comparison)

    def current(self, plain: str) -> Resource | None:
        """The resource ``Type/id`` as the record has it now."""
        return next((r for r in self.resources if _plain(r) == plain), None)

    def version_of(self, plain: str) -> str | None:
        """``meta.versionId`` of the resource ``Type/id`` as the record has it now."""
        now = self.current(plain)
        return _version(now) if now is not None else None


class RecordReader:
    """Fetches one patient's data from the launching EHR and runs the one assessment pipeline."""

    def __init__(
        self, assessor: Assessor, client: FhirClient, clock: Callable[[], datetime]
    ) -> None:
        self.assessor = assessor
        self.client = client
        self.clock = clock
        # Not the follow-up-orders search: the app's scopes do not grant ServiceRequest (the EHR
        # would refuse the whole page).
        self._templates = assessment_queries(assessor.value_sets)

    def queries(self, patient_id: str) -> dict[str, str]:
        """Relative FHIR searches for the patient: the assessment's templates, filled."""
        context = {"patientId": patient_id}
        return {key: fill_template(t, context)[0] for key, t in self._templates.items()}

    def read(self, fhir_base: str, patient_id: str, access_token: str) -> PatientRecord:
        """The patient's banner and assessment; FhirUnauthorized on 401/403, else SmartError.

        The Patient is read first: it is where a refused token or an unknown patient shows, with
        its own status. Then the searches run concurrently.
        """
        read = {"patient": f"Patient/{quote(patient_id, safe='')}"}
        patient = next(
            (
                r
                for r in self._fetch(fhir_base, read, access_token)["patient"]
                if r.get("resourceType") == "Patient"
            ),
            None,
        )
        if patient is None:
            raise SmartError(Failure.PATIENT_NOT_FOUND, "the Patient read returned no Patient")
        results = self._fetch(fhir_base, self.queries(patient_id), access_token)
        resources = [r for rs in results.values() for r in rs]
        assessment = self.assessor.assess(resources, patient_id, as_of=self.clock())
        return PatientRecord(banner_of(patient_id, patient), assessment, tuple(resources))

    def as_the_card_saw_it(
        self,
        fhir_base: str,
        patient_id: str,
        access_token: str,
        record: PatientRecord,
        references: Sequence[CardReference],
    ) -> Assessment | None:
        """The assessment of ``record`` with each resource the card named at the version the card
        read (a FHIR vread per version that differs), or None when no such version could be read.

        Only ever a help for saying what changed: any failure (a server without history, a
        refused read) leaves the page to say that a version changed without the old value.
        """
        replaced: dict[str, Resource] = {}
        for ref in references:
            if not ref.version:
                continue
            if record.version_of(ref.plain) == ref.version:
                continue
            query = {"v": f"{ref.plain}/_history/{quote(ref.version, safe='')}"}
            try:
                found = self._fetch(fhir_base, query, access_token)["v"]
            except (FhirUnauthorized, SmartError):
                continue
            old = next((r for r in found if _plain(r) == ref.plain), None)
            if old is not None:
                replaced[ref.plain] = old
        if not replaced:
            return None
        resources = [r for r in record.resources if _plain(r) not in replaced]
        resources += replaced.values()
        return self.assessor.assess(resources, patient_id, as_of=record.assessment.as_of)

    def _fetch(
        self, fhir_base: str, queries: dict[str, str], access_token: str
    ) -> dict[str, list[Resource]]:
        try:
            return self.client.fetch_all(fhir_base, queries, access_token)
        except FhirError as exc:
            status = exc.status
            if status in (401, 403):
                raise FhirUnauthorized(status) from exc
            if status in (404, 410):
                raise SmartError(Failure.PATIENT_NOT_FOUND, f"HTTP {status}") from exc
            raise SmartError(Failure.FHIR_UNAVAILABLE, str(exc)) from exc


def _plain(resource: Resource) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _version(resource: Resource) -> str | None:
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def last_updated(resource: Resource | None) -> str | None:
    """``meta.lastUpdated`` of a resource, when it has one."""
    meta = resource.get("meta") if resource else None
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def banner_of(patient_id: str, patient: Resource) -> PatientBanner:
    return PatientBanner(
        id=patient_id,
        name=_name(patient.get("name")),
        birth_date=_string(patient.get("birthDate")),
        gender=_string(patient.get("gender")),
        identifier=_identifier(patient.get("identifier")),
    )


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _name(names: Any) -> str | None:
    if not isinstance(names, list):
        return None
    usable = [n for n in names if isinstance(n, Mapping)]
    usable.sort(key=lambda n: {"official": 0, "usual": 1}.get(str(n.get("use")), 2))
    for name in usable:
        if _string(name.get("text")):
            return str(name["text"])
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        family = _string(name.get("family"))
        parts = [*given, *([family.upper()] if family else [])]
        if parts:
            return " ".join(parts)
    return None


def _identifier(identifiers: Any) -> str | None:
    if not isinstance(identifiers, list):
        return None
    usable = [i for i in identifiers if isinstance(i, Mapping) and _string(i.get("value"))]
    for identifier in usable:
        codings = (identifier.get("type") or {}).get("coding") or []
        if any(isinstance(c, Mapping) and c.get("code") == "MR" for c in codings):
            return str(identifier["value"])
    return str(usable[0]["value"]) if usable else None
