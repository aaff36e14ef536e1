"""``appContext``: how a CDS card tells the app which procedure it was about.

The card's ``smart`` link carries ``appContext`` (a JSON string, CDS Hooks 2.0 §link) naming every
input the card used, with versions, and the 12-month figure it showed::

    {"procedure": "Procedure/<id>/_history/<v>", "hbGrade": "Observation/<id>/_history/<v>",
     "operationTime": "Procedure/<id>/_history/<v>", "risk12m": 0.6057}

so the app can say what changed when the record moved on (clinical-presentation.md §5). The app
reads it when the EHR passes it on with the token,
and also accepts a bare ``Procedure/<id>[/_history/<v>]`` or a Procedure in ``fhirContext``. It is
optional: the page is computed from FHIR either way. No imports beyond the standard library, so
the card builder can use :func:`app_context_for` without loading the app.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

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
        out["risk12m"] = round(risk_12m, 4)
    return json.dumps(out, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class CardProcedure:
    """The procedure a CDS card named in ``appContext`` (or ``fhirContext``) when it opened the app."""

    id: str
    version: str | None

    @property
    def reference(self) -> str:
        ref = f"Procedure/{self.id}"
        return f"{ref}/_history/{self.version}" if self.version else ref


def card_procedure(app_context: str | None, fhir_context: tuple[str, ...]) -> CardProcedure | None:
    """The procedure named by the card: ``appContext`` as ``{"procedure": "Procedure/<id>…"}`` or a
    bare ``Procedure/<id>[/_history/<v>]``, else the first Procedure in ``fhirContext``. Anything else
    is ignored (the page is computed from FHIR either way)."""
    candidates: list[str] = []
    if app_context:
        try:
            parsed: Any = json.loads(app_context)
        except ValueError:
            parsed = app_context
        if isinstance(parsed, dict) and isinstance(parsed.get("procedure"), str):
            candidates.append(parsed["procedure"])
        elif isinstance(parsed, str):
            candidates.append(parsed)
    candidates.extend(fhir_context)
    for candidate in candidates:
        match = _PROCEDURE_REF.fullmatch(candidate.strip())
        if match:
            return CardProcedure(match.group(1), match.group(2))
    return None
