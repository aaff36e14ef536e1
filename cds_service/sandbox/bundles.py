"""FHIR transaction Bundles that load twice without duplicating anything.

Every resource carries a stable business identifier; its transaction entry is a conditional update
on that identifier (``PUT Type?identifier=system|value``) with a ``urn:uuid`` full URL derived from
the identifier, which the server rewrites to the id it assigns. No server id is chosen by the
client. :func:`stored_resources` shows a Bundle as a server would store it, without a server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from copy import deepcopy
from typing import Any, Final
from urllib.parse import quote

from fhir_mappings import Resource

_URN_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://hfs-cds.example.org/synthetic")


def full_url(resource: Mapping[str, Any]) -> str:
    """The ``urn:uuid`` full URL of a resource, derived from its first business identifier."""
    system, value = business_identifier(resource)
    return f"urn:uuid:{uuid.uuid5(_URN_NAMESPACE, f'{system}|{value}')}"


def business_identifier(resource: Mapping[str, Any]) -> tuple[str, str]:
    """``(system, value)`` of the resource's first identifier; ``ValueError`` if it has none."""
    identifiers = resource.get("identifier")
    first = identifiers[0] if isinstance(identifiers, list) and identifiers else None
    if (
        not isinstance(first, dict)
        or not isinstance(first.get("system"), str)
        or not isinstance(first.get("value"), str)
    ):
        kind = resource.get("resourceType", "resource")
        raise ValueError(
            f"{kind} has no identifier with a system and a value: every synthetic resource needs "
            "one, so that loading twice updates it instead of creating a duplicate"
        )
    return first["system"], first["value"]


def conditional_url(resource: Mapping[str, Any]) -> str:
    """``Type?identifier=system|value`` (percent-encoded) for a conditional update."""
    system, value = business_identifier(resource)
    token = quote(f"{system}|{value}", safe="")
    return f"{resource['resourceType']}?identifier={token}"


def transaction_entry(resource: Resource) -> Resource:
    """A transaction entry: conditional update on the business identifier, urn:uuid full URL."""
    return {
        "fullUrl": full_url(resource),
        "resource": resource,
        "request": {"method": "PUT", "url": conditional_url(resource)},
    }


def transaction_bundle(resources: Iterable[Resource]) -> Resource:
    """One transaction Bundle of conditional updates; ``ValueError`` on a repeated identifier."""
    entries: list[Resource] = []
    seen: set[str] = set()
    for resource in resources:
        entry = transaction_entry(resource)
        if entry["fullUrl"] in seen:
            system, value = business_identifier(resource)
            raise ValueError(f"two resources share the identifier {system}|{value}")
        seen.add(entry["fullUrl"])
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def stored_resources(bundle: Mapping[str, Any]) -> list[Resource]:
    """The resources as a FHIR server would store a synthetic transaction, without a server.

    Each resource gets its business identifier value as ``id`` (a valid FHIR id) and every
    ``urn:uuid`` reference becomes ``Type/id``: for scoring synthetic patients offline and in
    tests. References that name no entry are left as they are.
    """
    ids: dict[str, str] = {}
    resources: list[Resource] = []
    for entry in bundle.get("entry") or []:
        resource = {**entry["resource"], "id": business_identifier(entry["resource"])[1]}
        ids[entry["fullUrl"]] = f"{resource['resourceType']}/{resource['id']}"
        resources.append(resource)
    return [rewrite_references(resource, ids) for resource in resources]


def rewrite_references(resource: Resource, targets: Mapping[str, str]) -> Resource:
    """A deep copy of ``resource`` with each reference found in ``targets`` replaced."""
    copy = deepcopy(resource)
    for ref in iter_references(copy):
        target = targets.get(ref["reference"])
        if target is not None:
            ref["reference"] = target
    return copy


def iter_references(node: Any) -> list[dict[str, Any]]:
    """Every ``{"reference": str}`` object inside a resource (mutable, in document order)."""
    found: list[dict[str, Any]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("reference"), str):
                found.append(item)
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


__all__ = [
    "business_identifier",
    "conditional_url",
    "full_url",
    "iter_references",
    "rewrite_references",
    "stored_resources",
    "transaction_bundle",
    "transaction_entry",
]
