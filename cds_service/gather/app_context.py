"""``appContext``: how a CDS card tells the app which procedure it was about.

The card's ``smart`` link carries ``appContext`` (a JSON string, CDS Hooks 2.0 §link) naming every
input the card used, with versions, and the 12-month figure it showed::

    {"procedure": "Procedure/<id>/_history/<v>", "hbGrade": "Observation/<id>/_history/<v>",
     "operationTime": "Procedure/<id>/_history/<v>", "risk12m": 0.6057}

so the app can say what changed when the record moved on (clinical-presentation.md §5). The app
reads it when the EHR passes it on with the token,
and also accepts a bare ``Procedure/<id>[/_history/<v>]`` or a Procedure in ``fhirContext``. It is
optional: the page is computed from FHIR either way. The card builder writes it and the app reads
it, so the contract lives here, where both get their data from, and neither imports the other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

_PROCEDURE_REF = re.compile(
    r"(?:.*/)?Procedure/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?"
)


def app_context_for(
    procedure: str,
    hb_grade: str | None = None,
    operation_time: str | None = None,
    risk_12m: float | None = None,
) -> str:
    """The ``appContext`` string for a card about ``Procedure/<id>[/_history/<v>]``, naming the
    HB-grade and operation-time sources and the 12-month risk the card showed, when it had them."""
    out: dict[str, Any] = {"procedure": procedure}
    if hb_grade:
        out["hbGrade"] = hb_grade
    if operation_time:
        out["operationTime"] = operation_time
    if risk_12m is not None:
        out["risk12m"] = round(float(risk_12m), 4)  # a numpy float from the what-if path too
    return orjson.dumps(out).decode()  # compact, like json.dumps with separators=(",", ":")


_REFERENCE = re.compile(
    r"(?:.*/)?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?"
)


@dataclass(frozen=True, slots=True)
class CardReference:
    """A resource a CDS card used, with the version it read when the card was built."""

    resource_type: str
    id: str
    version: str | None

    @property
    def reference(self) -> str:
        ref = f"{self.resource_type}/{self.id}"
        return f"{ref}/_history/{self.version}" if self.version else ref

    @property
    def plain(self) -> str:
        """``Type/id``, without the version."""
        return f"{self.resource_type}/{self.id}"


@dataclass(frozen=True, slots=True)
class CardProcedure:
    """The procedure a CDS card named in ``appContext`` (or ``fhirContext``) when it opened the app."""

    id: str
    version: str | None

    @property
    def reference(self) -> str:
        ref = f"Procedure/{self.id}"
        return f"{ref}/_history/{self.version}" if self.version else ref


@dataclass(frozen=True, slots=True)
class CardInputs:
    """Everything the card that opened the app said it used: the procedure, the inputs' sources
    (with versions) and the 12-month figure it showed. Any part may be missing (an older card)."""

    procedure: CardProcedure
    hb_grade: CardReference | None = None
    operation_time: CardReference | None = None
    risk_12m: float | None = None

    @property
    def references(self) -> tuple[CardReference, ...]:
        """Every versioned resource the card named (the procedure first)."""
        p = self.procedure
        out = [CardReference("Procedure", p.id, p.version)]
        out += [r for r in (self.hb_grade, self.operation_time) if r is not None]
        return tuple(out)


def card_procedure(app_context: str | None, fhir_context: tuple[str, ...]) -> CardProcedure | None:
    """The procedure named by the card: ``appContext`` as ``{"procedure": "Procedure/<id>…"}`` or a
    bare ``Procedure/<id>[/_history/<v>]``, else the first Procedure in ``fhirContext``. Anything else
    is ignored (the page is computed from FHIR either way)."""
    inputs = card_inputs(app_context, fhir_context)
    return inputs.procedure if inputs else None


def card_inputs(app_context: str | None, fhir_context: tuple[str, ...]) -> CardInputs | None:
    """What the card used, from ``appContext`` in any of its forms: the full
    ``{"procedure", "hbGrade", "operationTime", "risk12m"}`` object, the older
    ``{"procedure": ...}``, or a bare ``Procedure/<id>[/_history/<v>]``; else the first Procedure
    in ``fhirContext``. Members that do not parse are ignored one by one; without a procedure
    there is nothing to compare, so None."""
    parsed: Any = None
    candidates: list[str] = []
    if app_context:
        try:
            parsed = json.loads(app_context)
        except ValueError:
            parsed = app_context
        if isinstance(parsed, dict) and isinstance(parsed.get("procedure"), str):
            candidates.append(parsed["procedure"])
        elif isinstance(parsed, str):
            candidates.append(parsed)
    candidates.extend(fhir_context)
    procedure = None
    for candidate in candidates:
        match = _PROCEDURE_REF.fullmatch(candidate.strip())
        if match:
            procedure = CardProcedure(match.group(1), match.group(2))
            break
    if procedure is None:
        return None
    if not isinstance(parsed, dict):
        return CardInputs(procedure)
    risk = parsed.get("risk12m")
    risk_12m = (
        float(risk)
        if isinstance(risk, int | float) and not isinstance(risk, bool) and 0.0 <= risk <= 1.0
        else None
    )
    return CardInputs(
        procedure,
        hb_grade=_reference(parsed.get("hbGrade"), "Observation"),
        operation_time=_reference(parsed.get("operationTime"), "Procedure", "Observation"),
        risk_12m=risk_12m,
    )


def _reference(value: Any, *types: str) -> CardReference | None:
    if not isinstance(value, str):
        return None
    match = _REFERENCE.fullmatch(value.strip()[:300])
    if match is None or match.group(1) not in types:
        return None
    return CardReference(match.group(1), match.group(2), match.group(3))
