"""Is a follow-up already ordered? Pure checks over ServiceRequests (no HTTP, no config).

The follow-up/referral codes are the value set ``follow_up_order`` (data, see ``valuesets.json``).
An order counts while it can still happen: ``active`` or ``draft`` (a draft is what our own card's
suggestion creates, so accepting it must stop the suggestion reappearing).
"""

from __future__ import annotations

from collections.abc import Iterable

from .collect import resources_from_bundle
from .subjects import subject_patient_id
from .types import Resource
from .valuesets import CodeSet

#: ServiceRequest statuses of an order that is still going to happen.
OPEN_ORDER_STATUSES = frozenset({"active", "draft"})


def is_follow_up_order(resource: object, codes: CodeSet) -> bool:
    """A ServiceRequest whose ``code`` has a coding in ``codes`` (status not checked)."""
    return (
        isinstance(resource, dict)
        and resource.get("resourceType") == "ServiceRequest"
        and codes.match(resource.get("code")) is not None
    )


def follow_up_ordered(resources: Iterable[Resource], patient_id: str, codes: CodeSet) -> bool:
    """True when an active or draft follow-up ServiceRequest for ``patient_id`` is on record.

    Orders about another patient, or naming no patient, never count: a wrong "already ordered"
    would hide the suggestion from a patient who has no follow-up.
    """
    return any(
        is_follow_up_order(r, codes)
        and r.get("status") in OPEN_ORDER_STATUSES
        and subject_patient_id(r) == patient_id
        for r in resources
    )


def drafts_follow_up(draft_orders: object, codes: CodeSet) -> bool:
    """True when the order-sign ``draftOrders`` Bundle holds a follow-up/referral order."""
    return any(is_follow_up_order(r, codes) for r in resources_from_bundle(draft_orders))
