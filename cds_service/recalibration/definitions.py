"""What counts as the outcome and as follow-up: the definitions a fit and a report write down
(:data:`OUTCOME_FHIR`, :data:`CENSORING_FHIR`). Follow-up is censored at the last HFS-specific
assessment, not at any contact: an unrelated lab visit says nothing about the spasm, and counting
it as recurrence-free follow-up biases the hazard down.

The follow-up value set is data: the key ``hfs_follow_up`` of the value-set file
(``fhir_mappings/data/valuesets.json``, or the site's ``CDS_VALUESETS_FILE``). A site file without
the key falls back to the packaged codes, and the report says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from cds_service.recalibration.errors import SourceError
from cds_service.recalibration.notes import N_
from fhir_mappings import ValueSets
from fhir_mappings.types import Code
from fhir_mappings.valuesets import CodeSet

FOLLOW_UP_KEY = "hfs_follow_up"

# The definitions are msgids too: cards and JSON keep them in English, the text and HTML reports
# say them in their reader's language.

OUTCOME_FHIR = N_(
    "Recurrence (composite): the earliest after the index ablation of a recorded recurrence "
    "(Condition or Observation in the recurrence value set), a later treatment such as "
    "microvascular decompression, or a repeat ablation; time from the end of the index ablation."
)
CENSORING_FHIR = N_(
    "Censored at the last HFS-specific assessment after the ablation: a final House-Brackmann "
    "grade, an Observation in the HFS follow-up value set, or an Encounter whose type, service "
    "type or reason is in that value set or is a hemifacial spasm diagnosis. Other contacts "
    "(unrelated visits, labs, procedures) do not extend follow-up."
)
OUTCOME_CSV = N_(
    "As supplied in the CSV's event column (1 = recurrence); the site defines it and should use "
    "the composite: recurrence record, microvascular decompression or repeat ablation."
)
CENSORING_CSV = N_(
    "As supplied in the CSV's time_months column for event = 0; the site should censor at the "
    "last HFS-specific assessment, not at any contact."
)
OUTCOME_SIMULATED = N_("Simulated recurrence times drawn from a model card (synthetic data).")
CENSORING_SIMULATED = N_(
    "Simulated: the earliest of exponential loss to follow-up, the end of the study and the "
    "as-of date (synthetic data)."
)
HORIZON_CENSORING = N_(
    "Follow-up beyond the evaluation horizon is censored there (administrative)."
)


@dataclass(frozen=True, slots=True)
class Definitions:
    """The outcome and censoring rules a cohort was built with (written into cards and reports)."""

    outcome: str
    censoring: str
    follow_up_codes: tuple[str, ...] = ()  # "system|code" of the follow-up value set
    follow_up_source: str = ""  # where the follow-up value set came from

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "censoring": self.censoring}
        if self.follow_up_codes:
            out["follow_up_value_set"] = list(self.follow_up_codes)
            out["follow_up_value_set_source"] = self.follow_up_source
        return out


CSV_DEFINITIONS = Definitions(OUTCOME_CSV, CENSORING_CSV)
SIMULATED_DEFINITIONS = Definitions(OUTCOME_SIMULATED, CENSORING_SIMULATED)


@dataclass(frozen=True, slots=True)
class FollowUpRules:
    """Which resources are HFS-specific assessments (the censoring rule)."""

    follow_up: CodeSet
    value_sets: ValueSets
    source: str

    def definitions(self) -> Definitions:
        codes = tuple(f"{c.system}|{c.code}" for c in self.follow_up.codes)
        return Definitions(OUTCOME_FHIR, CENSORING_FHIR, codes, self.source)


def follow_up_rules(value_sets: ValueSets, path: str | Path | None = None) -> FollowUpRules:
    """The follow-up value set from ``path`` (a value-set file), else the packaged file."""
    packaged = files("fhir_mappings").joinpath("data", "valuesets.json").read_text("utf-8")
    source = "packaged valuesets.json"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot read value sets from {path}: {exc}") from exc
        data = _object(text, str(path))
        if FOLLOW_UP_KEY in data:
            return FollowUpRules(_code_set(data, str(path)), value_sets, str(path))
        source += f" ({Path(path).name} has no {FOLLOW_UP_KEY!r})"
    return FollowUpRules(_code_set(_object(packaged, source), source), value_sets, source)


def _object(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{source}: the top level must be a JSON object")
    return data


def _code_set(data: dict[str, Any], source: str) -> CodeSet:
    entries = data.get(FOLLOW_UP_KEY)
    if not isinstance(entries, list):
        raise SourceError(f"{source}: {FOLLOW_UP_KEY!r} must be a list of codings")
    codes: list[Code] = []
    for i, entry in enumerate(entries):
        system = entry.get("system") if isinstance(entry, dict) else None
        code = entry.get("code") if isinstance(entry, dict) else None
        if not (isinstance(system, str) and system and isinstance(code, str) and code):
            raise SourceError(
                f"{source}: {FOLLOW_UP_KEY}[{i}] must be an object with non-empty 'system' and "
                "'code'"
            )
        display = entry.get("display")
        codes.append(Code(system, code, display if isinstance(display, str) else None))
    return CodeSet(FOLLOW_UP_KEY, tuple(codes))
