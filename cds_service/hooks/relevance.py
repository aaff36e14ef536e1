"""Does this hook call deserve a card? The alert-fatigue rule of clinical-presentation.md §4.

patient-view always may (suppression after feedback is a separate, stateful rule). The workflow
hooks speak only at the moment the estimate can change what is done:

- order-sign: the index ablation ended within the post-ablation window, or one of the orders being
  signed is a follow-up/referral order (value set ``follow_up_order``);
- encounter-discharge: the discharge within the window after the ablation;
- note-sign: the note within the window, or a note that names the index ablation (``procedureId``).

Pure: no Flask, no store. ``now`` is the service's clock; an ablation "ending" slightly in the
future (clock skew between EHR and service) counts as within the window.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cds_service.hooks.services import NOTE_SIGN_HOOK
from fhir_mappings import AblationProcedure, CodeSet
from fhir_mappings.orders import drafts_follow_up
from fhir_mappings.references import parse_reference


def is_relevant(
    hook: str,
    context: dict[str, Any],
    ablation: AblationProcedure | None,
    now: datetime,
    window_days: float,
    follow_up_codes: CodeSet,
) -> bool:
    """Whether the service should answer this call with its card (False: ``{"cards": []}``)."""
    if hook == "patient-view":
        return True
    in_window = ablation is not None and now - _latest_end(ablation) <= timedelta(days=window_days)
    if hook == "order-sign":
        return in_window or drafts_follow_up(context.get("draftOrders"), follow_up_codes)
    if hook == NOTE_SIGN_HOOK:
        return in_window or _names_procedure(context.get("procedureId"), ablation)
    return in_window  # encounter-discharge, and any hook added later: only right after the ablation


def _latest_end(ablation: AblationProcedure) -> datetime:
    """A date-only end is read as the start of that day; the ablation may have ended up to a day
    later, and the window must not close early because of the missing time."""
    return ablation.ended_at + (timedelta(0) if ablation.ended_at_has_time else timedelta(days=1))


def _names_procedure(value: object, ablation: AblationProcedure | None) -> bool:
    """``procedureId`` is the index ablation's id (bare, ``Procedure/id`` or versioned)."""
    if ablation is None or ablation.provenance.id is None or not isinstance(value, str):
        return False
    target = parse_reference(value) if "/" in value else ("Procedure", value)
    return target == ("Procedure", ablation.provenance.id)
