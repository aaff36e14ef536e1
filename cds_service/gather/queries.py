"""The FHIR queries an assessment needs, as prefetch templates (the hooks advertise them, the SMART
app and the sandbox smoke run them), and how they are filled."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from fhir_mappings import ValueSets

#: Open follow-up/referral orders: the card then offers no follow-up suggestion. Optional: when it
#: cannot be had, the card still shows (with the suggestion), since a missing card is worse.
FOLLOW_UP_ORDERS_KEY = "followUpOrders"

# ``{{context.patientId}}`` and ``{{userPractitionerId}}``-style tokens (CDS Hooks 2.0 §prefetch).
_TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")


def _token_list(pairs: list[tuple[str, str]]) -> str:
    """A token search value: comma-separated ``system|code``, each part percent-encoded."""
    return ",".join(f"{quote(system, safe='')}%7C{quote(code, safe='')}" for system, code in pairs)


def build_prefetch(value_sets: ValueSets) -> dict[str, str]:
    """Prefetch templates asking only for the codes the mapping uses (so EHRs send little)."""
    patient = "{{context.patientId}}"
    procedures = value_sets.codes("ablation_procedure") + value_sets.codes(
        "later_treatment_procedure"
    )
    observations = (
        value_sets.codes("hb_grade_observation")
        + value_sets.codes("operation_duration_observation")
        + value_sets.codes("recurrence_finding")
    )
    conditions = value_sets.codes("hemifacial_spasm_condition") + value_sets.codes(
        "recurrence_finding"
    )
    return {
        "procedures": f"Procedure?patient={patient}&code={_token_list(procedures)}",
        "observations": f"Observation?patient={patient}&code={_token_list(observations)}",
        "conditions": f"Condition?patient={patient}&code={_token_list(conditions)}",
        FOLLOW_UP_ORDERS_KEY: (
            f"ServiceRequest?patient={patient}&status=active,draft"
            f"&code={_token_list(value_sets.codes('follow_up_order'))}"
        ),
    }


def assessment_queries(value_sets: ValueSets) -> dict[str, str]:
    """Only what the assessment reads: the follow-up-orders search serves the card's suggestion,
    and a SMART app's scopes need not grant ServiceRequest."""
    return {k: t for k, t in build_prefetch(value_sets).items() if k != FOLLOW_UP_ORDERS_KEY}


def fill_template(template: str, context: Mapping[str, Any]) -> tuple[str, str | None]:
    """The template with tokens percent-encoded from ``context`` (``{{context.x}}``, and
    ``{{userPractitionerId}}`` from a ``userId`` of ``Practitioner/<id>``), and the first token
    without a string value (None when all had one)."""
    user_type, _, user_id = str(context.get("userId", "")).partition("/")
    missing: list[str] = []

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("context."):
            raw = context.get(name[8:])
        else:
            raw = user_id if user_id and name == f"user{user_type}Id" else None
        if not isinstance(raw, str):
            missing.append(name)
            return ""
        return quote(raw, safe="")

    return _TOKEN.sub(value, template), (missing[0] if missing else None)


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """The filled template, or None when a token has no value (skipped, as the sandbox does)."""
    rendered, missing = fill_template(template, context)
    return None if missing else rendered
