"""Which codes count as each model input, loaded from a JSON file (data, not code).

A site may replace the packaged ``data/valuesets.json`` with its own file of the same shape to add
local codes; nothing in the rules names a code directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from .json_access import coding_pairs
from .types import Code

#: The named code sets every value-set file must define (a list each, possibly empty).
SET_NAMES = (
    "ablation_procedure",
    "later_treatment_procedure",
    "operation_duration_observation",
    "hb_grade_observation",
    "hemifacial_spasm_condition",
    "recurrence_finding",
)
#: Named sets a file may omit: a site's file written before they existed still loads and gets
#: the packaged set. Not mapping inputs, so not in :attr:`ValueSets.relevant`.
OPTIONAL_SET_NAMES = (
    "follow_up_order",  # follow-up and referral orders (ServiceRequest.code) after the ablation
)


class ValueSetError(ValueError):
    """The value-set file is missing, not JSON, or not shaped like the packaged one."""


@dataclass(frozen=True, slots=True)
class CodeSet:
    """One named set of codings; ``(system, code) in code_set`` is a dict lookup."""

    name: str
    codes: tuple[Code, ...]
    _by_key: dict[tuple[str, str], Code] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key = {(c.system, c.code): c for c in self.codes}
        object.__setattr__(self, "_by_key", by_key)

    def __contains__(self, item: object) -> bool:
        try:
            return item in self._by_key
        except TypeError:  # an unhashable probe is simply not a member
            return False

    def has_any(self, pairs: Iterable[tuple[str, str]]) -> bool:
        """Whether any ``(system, code)`` of ``pairs`` is in the set."""
        return not self._by_key.keys().isdisjoint(pairs)

    def match(self, concept: object) -> Code | None:
        """The first coding of a CodeableConcept that is in the set (display from the set)."""
        for key in coding_pairs(concept):
            code = self._by_key.get(key)
            if code is not None:
                return code
        return None

    def first(self, pairs: Iterable[tuple[str, str]]) -> Code | None:
        """:meth:`match` on coding pairs read already (a Record's ``codes``)."""
        by_key = self._by_key
        for key in pairs:
            code = by_key.get(key)
            if code is not None:
                return code
        return None

    def describe(self) -> str:
        """``system|code`` of every member, for actions that tell people what to record."""
        return ", ".join(f"{c.system}|{c.code}" for c in self.codes)


@dataclass(frozen=True, slots=True)
class ValueSets:
    """All code sets of one value-set file."""

    version: str
    project_code_system: str
    house_brackmann_code_system: str
    ablation_procedure: CodeSet
    later_treatment_procedure: CodeSet
    operation_duration_observation: CodeSet
    hb_grade_observation: CodeSet
    hemifacial_spasm_condition: CodeSet
    recurrence_finding: CodeSet
    follow_up_order: CodeSet
    #: Every (system, code) any rule looks for: resources with none of them are never read.
    relevant: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = {(c.system, c.code) for name in SET_NAMES for c in self.code_set(name).codes}
        object.__setattr__(self, "relevant", frozenset(keys))

    def code_set(self, name: str) -> CodeSet:
        if name not in SET_NAMES and name not in OPTIONAL_SET_NAMES:
            known = ", ".join(SET_NAMES + OPTIONAL_SET_NAMES)
            raise KeyError(f"unknown value set {name!r}; known: {known}")
        value: CodeSet = getattr(self, name)
        return value

    def codes(self, name: str) -> list[tuple[str, str]]:
        """``(system, code)`` pairs of one set in file order (e.g. for FHIR search tokens)."""
        return [(c.system, c.code) for c in self.code_set(name).codes]


def load_value_sets(path: str | Path | None = None) -> ValueSets:
    """Load and check a value-set file; ``None`` means the packaged default (loaded once)."""
    if path is None:
        return _packaged()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueSetError(f"cannot read value sets from {path}: {exc}") from exc
    return parse_value_sets(text, str(path))


def parse_value_sets(text: str, source: str = "value sets") -> ValueSets:
    """Build :class:`ValueSets` from the JSON text of a value-set file."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueSetError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueSetError(f"{source}: the top level must be a JSON object")
    sets = {name: CodeSet(name, _codes(data, name, source)) for name in SET_NAMES}
    for name in OPTIONAL_SET_NAMES:
        # The packaged file defines every optional set, so this never recurses.
        sets[name] = (
            CodeSet(name, _codes(data, name, source))
            if name in data
            else _packaged().code_set(name)
        )
    return ValueSets(
        version=_text(data, "version", source),
        project_code_system=_text(data, "project_code_system", source),
        house_brackmann_code_system=_text(data, "house_brackmann_code_system", source),
        **sets,
    )


@cache
def _packaged() -> ValueSets:
    text = files("fhir_mappings").joinpath("data", "valuesets.json").read_text("utf-8")
    return parse_value_sets(text, "packaged valuesets.json")


def _text(data: dict[str, Any], key: str, source: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueSetError(f"{source}: {key!r} must be a non-empty string")
    return value


def _codes(data: dict[str, Any], name: str, source: str) -> tuple[Code, ...]:
    entries = data.get(name)
    if not isinstance(entries, list):
        raise ValueSetError(f"{source}: {name!r} must be a list of codings")
    codes = []
    for i, entry in enumerate(entries):
        where = f"{source}: {name}[{i}]"
        if not isinstance(entry, dict):
            raise ValueSetError(f"{where} must be an object with 'system' and 'code'")
        system, code, display = entry.get("system"), entry.get("code"), entry.get("display")
        if not isinstance(system, str) or not system.strip():
            raise ValueSetError(f"{where}: 'system' must be a non-empty string")
        if not isinstance(code, str) or not code.strip():
            raise ValueSetError(f"{where}: 'code' must be a non-empty string")
        if display is not None and not isinstance(display, str):
            raise ValueSetError(f"{where}: 'display' must be a string when present")
        codes.append(Code(system, code, display))
    return tuple(codes)
