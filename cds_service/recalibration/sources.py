"""Where a recalibration cohort comes from: a FHIR server, a Bulk Data export directory, a CSV file.

Each reader returns the raw material and a SHA-256 of it, which the refit model card records so
an audit can tell which data a card was fitted on: over the resources' canonical JSON in sorted
order for a FHIR server (the server's order does not matter), over the file names and bytes in name
order for a Bulk Data ``$export`` directory, over the bytes of a CSV file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal
from urllib.parse import urlencode, urlsplit

from cds_service.fhir import FhirClient, FhirError, FhirTooManyPages, search_matches
from cds_service.recalibration.errors import SourceError
from fhir_mappings import Resource, ValueSets

SourceKind = Literal["fhir", "ndjson", "csv", "simulated"]

#: Resource types the cohort rules read for each patient.
PATIENT_TYPES = ("Procedure", "Observation", "Condition", "Encounter")
#: Patients per ``subject=`` search (comma-separated references keep the URL short).
PATIENTS_PER_SEARCH = 50


@dataclass(frozen=True, slots=True)
class SourceData:
    """Resources read from a source, where they came from (never a token) and their checksum."""

    kind: SourceKind
    location: str
    resources: tuple[Resource, ...]
    sha256: str


def canonical_sha256(resources: Iterable[Resource]) -> str:
    """SHA-256 of the resources' canonical JSON, sorted by type, id and content."""
    texts = sorted(
        json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False) for r in resources
    )
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# -- FHIR server ------------------------------------------------------------------------------------


class FhirSearchClient:
    """Searches of one base URL through the one FHIR client (:mod:`cds_service.fhir`: its retries,
    paging rule and page cap), ``timeout_seconds`` for each page, in the command line's words."""

    def __init__(
        self,
        base: str,
        token: str | None = None,
        *,
        timeout_seconds: float = 30.0,
        max_pages: int = 1000,
        page_size: int = 200,
    ) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SourceError(f"--fhir {base!r} is not an http(s) FHIR base URL")
        if parts.username or parts.password:
            raise SourceError("--fhir must not carry credentials in the URL; use --token")
        self.base = base.rstrip("/")
        self._token = token
        self.page_size = page_size
        self.requests_made = 0  # pages read
        self.client = FhirClient(
            budget_seconds=timeout_seconds,
            connect_timeout_seconds=timeout_seconds,
            max_pages=max_pages,
            max_workers=1,
        )

    def close(self) -> None:
        self.client.close()

    def search(self, resource_type: str, params: Sequence[tuple[str, str]]) -> list[Resource]:
        """All matches of one search, following ``next`` links (at most ``max_pages`` pages)."""
        query = urlencode([*params, ("_count", str(self.page_size))])
        found: list[Resource] = []
        label = f"{resource_type} search"
        try:
            for bundle in self.client.pages(
                self.base, f"{resource_type}?{query}", self._token, query=label
            ):
                self.requests_made += 1
                found += search_matches(bundle)
        except FhirTooManyPages as exc:
            raise SourceError(
                f"{exc}; raise --max-pages if the server really holds that many"
            ) from exc
        except FhirError as exc:
            hint = "; check --token" if exc.status in (401, 403) else ""
            raise SourceError(f"{exc}{hint}") from exc
        return found


def fetch_fhir_resources(
    base: str,
    value_sets: ValueSets,
    token: str | None = None,
    *,
    max_pages: int = 1000,
    timeout_seconds: float = 30.0,
    since: date | None = None,
    until: date | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SourceData:
    """Everything the cohort rules need for every patient with an ablation Procedure.

    ``since``/``until`` narrow the ablation search by its ``date`` (the cohort rules then apply
    the exact window to each patient's index ablation). ``progress(done, total)`` hears of the
    patients whose records have been fetched."""
    client = FhirSearchClient(base, token, max_pages=max_pages, timeout_seconds=timeout_seconds)
    try:
        codes = ",".join(f"{s}|{c}" for s, c in value_sets.codes("ablation_procedure"))
        params = [("code", codes)]
        if since is not None:
            params.append(("date", f"ge{since.isoformat()}"))
        if until is not None:
            params.append(("date", f"le{until.isoformat()}"))
        ablations = client.search("Procedure", params)
        patients = sorted({pid for r in ablations if (pid := subject_id(r)) is not None})
        by_key: dict[tuple[str, str], Resource] = {}
        for start in range(0, len(patients), PATIENTS_PER_SEARCH):
            chunk = patients[start : start + PATIENTS_PER_SEARCH]
            subjects = ",".join(f"Patient/{pid}" for pid in chunk)
            for rtype in PATIENT_TYPES:
                for resource in client.search(rtype, [("subject", subjects)]):
                    key = (str(resource.get("resourceType")), str(resource.get("id")))
                    by_key[key] = resource
            if progress is not None:
                progress(start + len(chunk), len(patients))
    finally:
        client.close()
    resources = tuple(by_key[k] for k in sorted(by_key))
    return SourceData("fhir", client.base, resources, canonical_sha256(resources))


def subject_id(resource: Resource) -> str | None:
    """The Patient id a resource is about (``subject``, or ``patient`` for a few types)."""
    for key in ("subject", "patient"):
        ref = resource.get(key)
        text = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(text, str):
            parts = text.split("/")
            if "_history" in parts:
                parts = parts[: parts.index("_history")]
            if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
                return parts[-1]
    return None


# -- Bulk Data export -------------------------------------------------------------------------------


def read_ndjson_dir(path: str | Path) -> SourceData:
    """Every resource in the ``*.ndjson`` files of a Bulk Data ``$export`` directory."""
    folder = Path(path)
    if not folder.is_dir():
        raise SourceError(f"--ndjson {folder}: not a directory")
    files = sorted(folder.glob("*.ndjson"))
    if not files:
        raise SourceError(f"--ndjson {folder}: no *.ndjson files (one resource per line)")
    digest = hashlib.sha256()
    resources: list[Resource] = []
    for file in files:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {file}: {exc.strerror}") from exc
        digest.update(file.name.encode("utf-8") + b"\0" + raw + b"\0")
        for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                resource = json.loads(line)
            except ValueError as exc:
                raise SourceError(f"{file.name} line {number}: not valid JSON ({exc})") from exc
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                raise SourceError(f"{file.name} line {number}: not a FHIR resource")
            resources.append(resource)
    return SourceData("ndjson", folder.name, tuple(resources), digest.hexdigest())


def write_ndjson_dir(resources: Iterable[Resource], path: str | Path) -> list[Path]:
    """Write resources as a Bulk Data export: one ``<Type>.ndjson`` file per resource type."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[str]] = {}
    for resource in resources:
        line = json.dumps(resource, separators=(",", ":"), ensure_ascii=False)
        by_type.setdefault(str(resource["resourceType"]), []).append(line)
    written = []
    for rtype, lines in sorted(by_type.items()):
        file = folder / f"{rtype}.ndjson"
        file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(file)
    return written


# -- CSV --------------------------------------------------------------------------------------------


def read_csv_file(path: str | Path) -> tuple[str, str]:
    """The text of a cohort CSV file and the SHA-256 of its bytes."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {file}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{file}: not UTF-8 text") from exc
    return text, hashlib.sha256(raw).hexdigest()
