"""Load a transaction Bundle into any FHIR server without duplicating anything (``hfs-cds load``).

1. **Look before writing.** Every entry whose request is a conditional update on a business
   identifier (``PUT Type?identifier=system|value``, as :mod:`~cds_service.sandbox.bundles` writes
   them) is looked up on the server first, a few dozen identifiers per search. An entry whose
   stored copy already says the same thing is *unchanged* and is not sent again (references to it
   are rewritten to its server id), so loading twice costs one search per type and writes nothing.
2. **Transaction.** The rest goes in one transaction; the server resolves the conditional updates
   and rewrites the ``urn:uuid`` references (sekmet-fhir and HAPI both do).
3. **Fallbacks.** A server that does not support transactions (405, 501, or an OperationOutcome
   whose issue code is ``not-supported``) gets the entries in dependency order (those referenced
   first), as one batch per level, with ``urn:uuid`` references rewritten by the loader to the ids
   the server assigned; a server that does not support batches either, or refuses conditional
   updates, gets one request per resource: ``PUT Type/id`` for a known resource, else a
   conditional update, else a conditional create (``POST`` with ``If-None-Exist``). A server that
   *refused the data* (any other error, e.g. 400 or 422 about the content) gets no fallback: the
   load stops with the server's diagnostics, since retrying piece by piece would load part of a
   patient the server found wrong (a transaction refused writes nothing).

The report counts created, updated and unchanged resources and says which path was taken.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote

from cds_service.fhir import FhirError, outcome_text, search_matches
from cds_service.sandbox.bundles import iter_references, rewrite_references
from cds_service.sandbox.fhir_http import (
    FhirEndpoint,
    Interrupted,
    SandboxError,
    wait_for_metadata,
)
from fhir_mappings import Resource

Mode = Literal["auto", "transaction", "batch", "per-resource"]
MODES: tuple[Mode, ...] = ("auto", "transaction", "batch", "per-resource")
Outcome = Literal["created", "updated", "unchanged", "failed"]

#: Identifiers per search when looking resources up (keeps URLs well under 2 kB on any server).
LOOKUP_CHUNK = 20
#: Statuses meaning "this server does not do that here" (as opposed to "your data is wrong"), for
#: a conditional update that is retried as a conditional create of the same resource.
_NOT_SUPPORTED = frozenset({400, 404, 405, 422, 501})
#: Statuses that say a server does not take a kind of Bundle at all, whatever it holds (Method Not
#: Allowed, Not Implemented). Other refusals count as "unsupported" only with a ``not-supported``
#: OperationOutcome: a 400 or 422 about the content is the data refused, never a reason to retry it
#: in pieces.
_BUNDLE_NOT_SUPPORTED = frozenset({405, 501})


@dataclass(frozen=True)
class Refusal:
    """Why a server did not take a Bundle; ``unsupported``: it does not do that kind of Bundle
    (fall back), else it refused what the Bundle holds (stop)."""

    reason: str
    unsupported: bool

    def __str__(self) -> str:
        return self.reason


@dataclass
class _Item:
    """One Bundle entry on its way to the server."""

    index: int
    full_url: str | None
    resource: Resource
    method: str
    url: str
    identifier: tuple[str, str] | None  # from a conditional ``identifier=system|value`` URL
    existing: Resource | None = None
    server_id: str | None = None
    outcome: Outcome | None = None
    error: str | None = None

    @property
    def type(self) -> str:
        return str(self.resource.get("resourceType"))

    @property
    def label(self) -> str:
        if self.identifier:
            return f"{self.type} {self.identifier[1]}"
        return f"{self.type} (entry {self.index})"


@dataclass
class LoadReport:
    """What happened to each resource, and how the server was talked to."""

    base: str
    fhir_version: str
    path: str = "nothing to send"
    created: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    patients: int = 0
    resources: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def totals(self) -> tuple[int, int, int]:
        return (
            sum(self.created.values()),
            sum(self.updated.values()),
            sum(self.unchanged.values()),
        )

    def render(self) -> str:
        created, updated, unchanged = self.totals()
        lines = [
            f"FHIR server {self.base} (FHIR {self.fhir_version})",
            f"{self.resources} resources for {self.patients} patients via {self.path}: "
            f"{created} created, {updated} updated, {unchanged} unchanged"
            + (f", {len(self.failures)} FAILED" if self.failures else ""),
        ]
        types = sorted(set(self.created) | set(self.updated) | set(self.unchanged))
        for kind in types:
            lines.append(
                f"  {kind:<12} {self.created[kind]:>4} created {self.updated[kind]:>4} updated "
                f"{self.unchanged[kind]:>4} unchanged"
            )
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"FAILED: {failure}" for failure in self.failures]
        return "\n".join(lines)


def load_bundle(
    endpoint: FhirEndpoint,
    bundle: Mapping[str, Any],
    mode: Mode = "auto",
    *,
    wait_seconds: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> LoadReport:
    """Load ``bundle`` (a transaction) into the server; see the module docstring for how.

    ``wait_seconds`` waits that long for a server that is still starting (``/metadata``).
    ``progress(done, total)`` hears of resources as they are settled. Ctrl-C raises
    :class:`Interrupted` with the summary of what the server confirmed until then.
    """
    items = _items(bundle)
    capability = wait_for_metadata(endpoint, wait_seconds)
    version = str(capability.get("fhirVersion") or "unknown version")
    report = LoadReport(endpoint.base, version)
    report.patients = sum(1 for i in items if i.type == "Patient")
    report.resources = len(items)
    if not version.startswith("4.0"):
        report.notes.append(
            f"the server says FHIR {version}; the synthetic data is FHIR R4 (4.0.1)"
        )
    done = 0

    def advance(settled: int) -> None:
        nonlocal done
        done += settled
        if progress is not None:
            progress(done, len(items))

    try:
        _look_up_existing(endpoint, items, report)
        resolved: dict[str, str] = {}  # full URL -> "Type/id" on the server
        pending: list[_Item] = []
        for item in items:
            if item.existing is not None and _same_content(item, items, endpoint.base):
                item.outcome, item.server_id = "unchanged", str(item.existing["id"])
                if item.full_url:
                    resolved[item.full_url] = f"{item.type}/{item.server_id}"
            else:
                pending.append(item)
        advance(len(items) - len(pending))
        if pending:
            refused = None
            if mode in ("auto", "transaction"):
                refused = _transaction(endpoint, pending, resolved)
                if refused is None:
                    report.path = "transaction"
                    advance(len(pending))
                elif not refused.unsupported:
                    report.path = "transaction (refused)"
                    report.failures.append(
                        f"the server refused the data ({refused}); nothing was written and "
                        "nothing else was tried (loading it in pieces would leave part of it on "
                        "the server): correct what the server names and load again"
                    )
                elif mode == "transaction":
                    report.path = "transaction (refused)"
                    report.failures.append(
                        f"the server refused the transaction ({refused}); nothing was written "
                        "(--mode auto falls back to batch and single requests)"
                    )
                else:
                    report.notes.append(f"the server refused the transaction ({refused})")
            fallback = refused is not None and refused.unsupported
            if mode in ("batch", "per-resource") or (mode == "auto" and fallback):
                use_batch = mode != "per-resource"
                _staged(endpoint, pending, resolved, report, advance, use_batch=use_batch)
    except KeyboardInterrupt as stop:
        report.notes.append(
            "interrupted: the counts are what the server confirmed; load again to finish"
        )
        raise Interrupted(_tally(items, report).render()) from stop
    return _tally(items, report)


def _tally(items: list[_Item], report: LoadReport) -> LoadReport:
    """The counts by outcome, and a failure line for each item that failed on its own."""
    for item in items:
        if item.outcome in ("created", "updated", "unchanged"):
            getattr(report, item.outcome)[item.type] += 1
        elif item.error and not any(f.startswith(item.label + ":") for f in report.failures):
            report.failures.append(f"{item.label}: {item.error}")
    return report


# -- the bundle -----------------------------------------------------------------------------------


def _items(bundle: Mapping[str, Any]) -> list[_Item]:
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise SandboxError("the file does not hold a FHIR Bundle")
    if bundle.get("type") not in ("transaction", "batch"):
        raise SandboxError(
            f"the Bundle has type {bundle.get('type')!r}; the loader needs a transaction (write "
            "one with `hfs-cds synth`)"
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or not entries:
        raise SandboxError("the Bundle has no entries")
    items: list[_Item] = []
    for index, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or not isinstance(resource, dict):
            raise SandboxError(f"Bundle entry {index} needs a resource and a request")
        method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
        if method not in ("PUT", "POST") or not url:
            raise SandboxError(
                f"Bundle entry {index}: only PUT and POST entries can be loaded (got {method!r})"
            )
        full_url = entry.get("fullUrl")
        items.append(
            _Item(
                index=index,
                full_url=full_url if isinstance(full_url, str) else None,
                resource=copy.deepcopy(resource),
                method=method,
                url=url,
                identifier=_conditional_identifier(url),
            )
        )
    return items


def _conditional_identifier(url: str) -> tuple[str, str] | None:
    """``(system, value)`` of ``Type?identifier=system|value``; None for anything else."""
    path, _, query = url.partition("?")
    params = parse_qsl(query)
    if "/" in path or len(params) != 1 or params[0][0] != "identifier":
        return None
    system, bar, value = params[0][1].partition("|")
    return (system, value) if bar and system and value else None


# -- step 1: what is there already ----------------------------------------------------------------


def _look_up_existing(endpoint: FhirEndpoint, items: list[_Item], report: LoadReport) -> None:
    wanted: dict[tuple[str, str], list[_Item]] = {}
    for item in items:
        if item.identifier:
            wanted.setdefault((item.type, item.identifier[0]), []).append(item)
    for (kind, system), group in wanted.items():
        by_value = {item.identifier[1]: item for item in group if item.identifier}
        values = sorted(by_value)
        for start in range(0, len(values), LOOKUP_CHUNK):
            chunk = values[start : start + LOOKUP_CHUNK]
            token = ",".join(quote(f"{system}|{v}", safe="") for v in chunk)
            found = _search_all(endpoint, f"{kind}?identifier={token}&_count={2 * len(chunk)}")
            if found is None:
                report.notes.append(
                    f"the server could not search {kind} by identifier, so unchanged {kind} "
                    "resources cannot be recognised; conditional updates still avoid duplicates"
                )
                break
            matches: dict[str, list[Resource]] = {}
            for resource in found:
                if resource.get("resourceType") != kind:
                    continue
                for value in _identifier_values(resource, system):
                    if value in by_value:
                        matches.setdefault(value, []).append(resource)
            for value, resources in matches.items():
                if len({r.get("id") for r in resources}) > 1:
                    raise SandboxError(
                        f"{len(resources)} {kind} resources on the server carry the identifier "
                        f"{system}|{value}, so a conditional update cannot choose one; delete the "
                        "duplicates and load again"
                    )
                by_value[value].existing = resources[0]


def _search_all(endpoint: FhirEndpoint, query: str) -> list[Resource] | None:
    """Every matching resource of a search, all pages; None when the server cannot run it."""
    try:
        return [r for page in endpoint.pages(query) for r in search_matches(page)]
    except FhirError:
        return None


def _identifier_values(resource: Mapping[str, Any], system: str) -> list[str]:
    return [
        i["value"]
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and i.get("system") == system and isinstance(i.get("value"), str)
    ]


# -- unchanged? -----------------------------------------------------------------------------------


def _same_content(item: _Item, items: Sequence[_Item], base: str) -> bool:
    """Whether the server's copy says what the entry says (ids, meta and narrative aside)."""
    existing = item.existing
    assert existing is not None
    by_url = {i.full_url: i.identifier for i in items if i.full_url and i.identifier}
    by_server_id = {
        (i.type, str(i.existing.get("id"))): i.identifier
        for i in items
        if i.existing is not None and i.identifier
    }

    def ours(reference: str) -> object:
        return by_url.get(reference, reference)

    def theirs(reference: str) -> object:
        local = reference.removeprefix(base.rstrip("/") + "/")
        parts = local.split("/")
        return by_server_id.get((parts[0], parts[1]), reference) if len(parts) >= 2 else reference

    if not _meta_codings(item.resource) <= _meta_codings(existing):
        return False
    drop = ("id", "meta") if "text" in item.resource else ("id", "meta", "text")
    return _normalised(item.resource, drop, ours) == _normalised(existing, drop, theirs)


def _meta_codings(resource: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
    assert isinstance(meta, dict)
    return {
        (kind, str(c.get("system")), str(c.get("code")))
        for kind in ("tag", "security")
        for c in meta.get(kind) or []
        if isinstance(c, dict)
    }


def _normalised(resource: Mapping[str, Any], drop: Iterable[str], resolve: Any) -> str:
    kept = copy.deepcopy({k: v for k, v in resource.items() if k not in drop})
    for ref in iter_references(kept):
        ref["reference"] = resolve(ref["reference"])
    return json.dumps(kept, sort_keys=True, default=str)


# -- step 2: one transaction ----------------------------------------------------------------------


def _transaction(
    endpoint: FhirEndpoint, pending: list[_Item], resolved: dict[str, str]
) -> Refusal | None:
    """None when the server took the transaction, else why it did not."""
    entries = _post_bundle(endpoint, "transaction", pending, resolved)
    if isinstance(entries, Refusal):
        return entries
    for item, entry in zip(pending, entries, strict=True):
        response = _response(entry)
        item.outcome = "created" if _status_code(response.get("status")) == 201 else "updated"
        item.error = None
        location = response.get("location")
        item.server_id = _id_from_location(location, item.type) or _resource_id(entry)
    return None


# -- step 3: batches by dependency level, then one request per resource ---------------------------


def _staged(
    endpoint: FhirEndpoint,
    pending: list[_Item],
    resolved: dict[str, str],
    report: LoadReport,
    advance: Callable[[int], None],
    *,
    use_batch: bool,
) -> None:
    levels = _levels(pending)
    batch_ok = use_batch
    paths: set[str] = set()
    retried_singly = 0
    for depth, level in enumerate(levels):
        ready: list[_Item] = []
        for item in level:
            if any(r not in resolved for r in _bundle_refs(item)):
                item.error = "not loaded: a resource it references failed to load"
                item.outcome = "failed"
            else:
                ready.append(item)
        advance(len(level) - len(ready))
        if not ready:
            continue
        singles = ready
        if batch_ok:
            done, refused = _batch(endpoint, ready, resolved, report)
            if refused is not None and not refused.unsupported:
                for item in ready:
                    item.outcome = "failed"
                report.failures.append(
                    f"the server refused the data of a batch ({refused}); the load stopped "
                    "there (earlier batches stay on the server): correct what the server names "
                    "and load again, which skips what is already there"
                )
                _abandon(levels[depth + 1 :], advance)
                advance(len(ready))
                break
            if refused is not None:
                batch_ok = False
            else:
                paths.add("batch")
                singles = [i for i in ready if i not in done]
                retried_singly += len(singles)
                advance(len(done))
        for item in singles:
            _write_one(endpoint, item, resolved, report)
            paths.add("per-resource requests")
            advance(1)
        for item in ready:
            stored = item.outcome in ("created", "updated", "unchanged")
            if stored and item.server_id and item.full_url:
                resolved[item.full_url] = f"{item.type}/{item.server_id}"
    if retried_singly:
        report.notes.append(f"{retried_singly} batch entries failed and were retried one by one")
    report.path = " + ".join(sorted(paths)) or "nothing sent"
    if levels and len(levels) > 1:
        report.notes.append(
            f"entries were sent in {len(levels)} dependency levels so that references resolve"
        )


def _levels(pending: list[_Item]) -> list[list[_Item]]:
    """Entries grouped so that each references only entries of earlier groups."""
    level: dict[int, int] = {}
    by_url = {i.full_url: i for i in pending if i.full_url}
    remaining = list(pending)
    while remaining:
        progressed = False
        for item in list(remaining):
            deps = [by_url[r] for r in _bundle_refs(item) if r in by_url]
            if all(d.index in level for d in deps):
                level[item.index] = 1 + max((level[d.index] for d in deps), default=-1)
                remaining.remove(item)
                progressed = True
        if not progressed:
            raise SandboxError(
                "the Bundle's entries reference each other in a cycle; only a transaction can "
                "load them, and this server refused it"
            )
    groups: dict[int, list[_Item]] = {}
    for item in pending:
        groups.setdefault(level[item.index], []).append(item)
    return [groups[k] for k in sorted(groups)]


def _bundle_refs(item: _Item) -> list[str]:
    """References of ``item`` to other entries' full URLs (``urn:uuid:...``)."""
    return [
        ref["reference"]
        for ref in iter_references(item.resource)
        if ref["reference"].startswith("urn:")
    ]


def _abandon(levels: list[list[_Item]], advance: Callable[[int], None]) -> None:
    """Mark the items of levels not sent (the load stopped before them) as failed."""
    for level in levels:
        for item in level:
            item.outcome = "failed"
        advance(len(level))


def _batch(
    endpoint: FhirEndpoint, ready: list[_Item], resolved: dict[str, str], report: LoadReport
) -> tuple[list[_Item], Refusal | None]:
    """Send one batch; returns the items it stored and, if it refused the batch, why."""
    entries = _post_bundle(endpoint, "batch", ready, resolved)
    if isinstance(entries, Refusal):
        if entries.unsupported:
            report.notes.append(
                f"the server refused a batch ({entries}); sending one request per resource"
            )
        return [], entries
    done: list[_Item] = []
    for item, entry in zip(ready, entries, strict=True):
        response = _response(entry)
        status = _status_code(response.get("status"))
        if 200 <= status < 300:
            location = response.get("location")
            item.server_id = _id_from_location(location, item.type) or _resource_id(entry)
            if item.server_id is None:
                item.server_id = _find_id(endpoint, item)
            item.outcome = "created" if status == 201 else "updated"
            item.error = None
            done.append(item)
        else:
            item.error = f"batch entry answered {status}: {outcome_text(response.get('outcome'))}"
    return done, None


def _write_one(
    endpoint: FhirEndpoint, item: _Item, resolved: dict[str, str], report: LoadReport
) -> None:
    resource = rewrite_references(item.resource, resolved)
    if item.existing is not None:
        resource["id"] = item.existing["id"]
        answer = endpoint.request("PUT", f"{item.type}/{item.existing['id']}", body=resource)
    else:
        answer = endpoint.request(item.method, item.url, body=resource)
        if not answer.ok and item.identifier and answer.status in _NOT_SUPPORTED:
            system, value = item.identifier
            report_note = (
                f"conditional update refused (HTTP {answer.status}); used conditional create "
                "(If-None-Exist) instead"
            )
            if report_note not in report.notes:
                report.notes.append(report_note)
            answer = endpoint.request(
                "POST",
                item.type,
                body=resource,
                headers={"If-None-Exist": f"identifier={quote(f'{system}|{value}', safe='')}"},
            )
    if not answer.ok:
        item.outcome, item.error = "failed", f"HTTP {answer.status}: {answer.diagnostics()}"
        return
    item.error = None
    item.outcome = "created" if answer.status == 201 else "updated"
    if item.existing is None and answer.status == 200 and item.method == "POST":
        item.outcome = "unchanged"  # If-None-Exist found it although the search did not
    item.server_id = (
        _id_from_location(answer.headers.get("Location"), item.type)
        or _id_from_location(answer.headers.get("Content-Location"), item.type)
        or (str(answer.body["id"]) if answer.body and answer.body.get("id") else None)
        or _find_id(endpoint, item)
    )


def _find_id(endpoint: FhirEndpoint, item: _Item) -> str | None:
    """The server id of a just-written resource, by its identifier (no Location given)."""
    if not item.identifier:
        return None
    system, value = item.identifier
    found = _search_all(endpoint, f"{item.type}?identifier={quote(f'{system}|{value}', safe='')}")
    ids = {str(r.get("id")) for r in found or [] if value in _identifier_values(r, system)}
    return ids.pop() if len(ids) == 1 else None


# -- helpers --------------------------------------------------------------------------------------


def _entry(item: _Item, resolved: Mapping[str, str]) -> Resource:
    entry: Resource = {
        "resource": rewrite_references(item.resource, resolved),
        "request": {"method": item.method, "url": item.url},
    }
    if item.full_url:
        entry["fullUrl"] = item.full_url
    return entry


def _post_bundle(
    endpoint: FhirEndpoint, kind: str, items: list[_Item], resolved: Mapping[str, str]
) -> list[Any] | Refusal:
    """The response entries, one per item; else why the server did not take the Bundle."""
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [_entry(i, resolved) for i in items]}
    answer = endpoint.request("POST", "", body=bundle, headers={"Prefer": "return=minimal"})
    if not answer.ok:
        unsupported = answer.status in _BUNDLE_NOT_SUPPORTED or "not-supported" in _issue_codes(
            answer.body
        )
        return Refusal(f"HTTP {answer.status}: {answer.diagnostics()}", unsupported)
    entries = answer.body.get("entry") if answer.body else None
    if (
        answer.body is None
        or answer.body.get("type") != f"{kind}-response"
        or not isinstance(entries, list)
        or len(entries) != len(items)
    ):
        # A 2xx that is not the Bundle asked for: the server does not do this kind of Bundle
        # (it said nothing against the data), so the fallbacks may try.
        return Refusal(f"the answer was not a {kind}-response with one entry per request", True)
    return entries


def _issue_codes(body: Mapping[str, Any] | None) -> set[str]:
    """The issue codes of an OperationOutcome (``not-supported``, ``invalid``...); none else."""
    if not body or body.get("resourceType") != "OperationOutcome":
        return set()
    return {
        str(issue.get("code"))
        for issue in body.get("issue") or []
        if isinstance(issue, dict) and issue.get("code")
    }


def _response(entry: Any) -> dict[str, Any]:
    response = entry.get("response") if isinstance(entry, dict) else None
    return response if isinstance(response, dict) else {}


def _status_code(status: Any) -> int:
    try:
        return int(str(status).split()[0])
    except (ValueError, IndexError):
        return 0


def _id_from_location(location: Any, kind: str) -> str | None:
    """``id`` from ``[base/]Type/id[/_history/v]``."""
    if not isinstance(location, str):
        return None
    parts = location.split("?", 1)[0].rstrip("/").split("/")
    for i in range(len(parts) - 1):
        if parts[i] == kind and parts[i + 1] and parts[i + 1] != "_history":
            return parts[i + 1]
    return None


def _resource_id(entry: Any) -> str | None:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    rid = resource.get("id") if isinstance(resource, dict) else None
    return str(rid) if rid else None


__all__ = ["MODES", "LOOKUP_CHUNK", "LoadReport", "Mode", "load_bundle"]
