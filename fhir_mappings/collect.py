"""Whatever the caller passed (dicts, Bundles, fhir.resources models) as plain resource dicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from .types import Resource

# Bundles inside Bundles are flattened this deep (prefetch answers are searchset Bundles).
_MAX_BUNDLE_DEPTH = 3


class SupportsModelDump(Protocol):
    """A pydantic model such as a fhir.resources resource."""

    def model_dump(self, *, mode: str, by_alias: bool, exclude_none: bool) -> dict[str, Any]: ...


ResourceInput = Resource | SupportsModelDump


def to_json(item: object) -> object:
    """A fhir.resources model as FHIR JSON (aliases such as resourceType, no nulls); else as is."""
    dump = getattr(item, "model_dump", None)
    if not callable(dump) or isinstance(item, dict):
        return item
    return dump(mode="json", by_alias=True, exclude_none=True)


def resources_from_bundle(bundle: object) -> list[Resource]:
    """The ``entry[].resource`` objects of a Bundle; malformed entries are skipped."""
    try:
        bundle = to_json(bundle)
    except Exception:  # a third-party model that cannot serialise: nothing to read
        return []
    if not isinstance(bundle, dict):
        return []
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    out: list[Resource] = []
    for entry in entries:
        if isinstance(entry, dict):
            resource = entry.get("resource")
            if isinstance(resource, dict):
                out.append(resource)
    return out


def _visit(item: object, depth: int, out: list[Resource], counts: dict[str, int]) -> None:
    """Add ``item`` to ``out``: a resource as is, a Bundle's resources (to a depth), else count it.

    A module function, not a closure: a recursive closure is a reference cycle that would keep
    the whole prefetch alive until the garbage collector runs (issue 12).
    """
    # A dict is already JSON (to_json returns it as is): no model_dump lookup, which fails
    # with an exception inside getattr for every plain resource (assess(heavy) 385 -> 359 us,
    # 520 resources; issue 12).
    if not isinstance(item, dict):
        try:
            item = to_json(item)
        except Exception:  # see resources_from_bundle
            counts["unconvertible"] += 1
            return
    if not isinstance(item, dict):
        counts["not-object"] += 1
    elif item.get("resourceType") == "Bundle" and depth < _MAX_BUNDLE_DEPTH:
        for resource in resources_from_bundle(item):
            _visit(resource, depth + 1, out, counts)
    else:
        out.append(item)


def collect_resources(items: object) -> tuple[list[Resource], list[str]]:
    """Resource dicts from a list of resources/models/Bundles or a single Bundle, with notes."""
    out: list[Resource] = []
    counts = {"not-object": 0, "unconvertible": 0}
    if isinstance(items, dict) or hasattr(items, "model_dump"):
        _visit(items, 0, out, counts)  # a single Bundle or resource
    elif isinstance(items, Iterable) and not isinstance(items, str | bytes):
        for item in items:
            _visit(item, 0, out, counts)
    else:
        counts["not-object"] += 1
    notes = []
    if counts["not-object"]:
        notes.append(f"{counts['not-object']} item(s) set aside: not a FHIR resource (JSON object)")
    if counts["unconvertible"]:
        notes.append(f"{counts['unconvertible']} model object(s) set aside: could not be converted")
    return out, notes
