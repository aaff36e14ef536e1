"""fast_init: a frozen dataclass built through its slots is the same object dataclass would build."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from cds_service import assessment
from fhir_mappings import types
from fhir_mappings.frozen import fast_init
from fhir_mappings.hb_grade import _Grade
from fhir_mappings.procedure import IndexAblation, ProcedureReview, _Dated
from fhir_mappings.records import Record

#: Every class the request path builds with fast_init (issue 12: 16 -> 10 us per assessment).
FAST = [
    Record,
    _Grade,
    _Dated,
    IndexAblation,
    ProcedureReview,
    types.Provenance,
    types.Problem,
    types.AblationProcedure,
    types.OperationTime,
    types.HouseBrackmannGrade,
    types.Diagnosis,
    types.PatientInputs,
    assessment.RiskPoint,
    assessment.ConditionalRisk,
    assessment.Assessment,
]


def _plain_twin(cls: type) -> Any:
    """The same fields declared again with plain @dataclass(frozen=True, slots=True)."""
    spec = [
        (f.name, f.type, dataclasses.field(default=f.default))
        if f.default is not dataclasses.MISSING
        else (f.name, f.type)
        for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(cls.__name__, spec, frozen=True, slots=True)


@pytest.mark.parametrize("cls", FAST, ids=lambda c: c.__name__)
def test_fast_init_keeps_signature_values_defaults_and_immutability(cls: Any) -> None:
    twin = _plain_twin(cls)
    assert inspect.signature(cls).parameters.keys() == inspect.signature(twin).parameters.keys()
    fields = dataclasses.fields(cls)
    required = [f for f in fields if f.default is dataclasses.MISSING]
    # Distinct sentinels, so a value stored in the wrong slot cannot go unnoticed.
    values = {f.name: object() for f in fields}
    full = cls(**values)
    assert {f.name: getattr(full, f.name) for f in fields} == values
    positional = cls(*values.values())
    assert {f.name: getattr(positional, f.name) for f in fields} == values
    minimal = cls(**{f.name: values[f.name] for f in required})
    reference = twin(**{f.name: values[f.name] for f in required})
    assert [getattr(minimal, f.name) for f in fields] == [
        getattr(reference, f.name) for f in fields
    ]
    assert repr(minimal).split("(", 1)[1] == repr(reference).split("(", 1)[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(full, fields[0].name, None)
    with pytest.raises(TypeError):
        cls()  # the required fields are still required
    assert full == cls(**values)
    if len(required) < len(fields):
        assert full != minimal  # the defaults were used, not the sentinels


def test_fast_init_refuses_what_it_would_not_build_the_same() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithPostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class KeywordOnly:
        a: int = dataclasses.field(kw_only=True)

    for cls in (WithPostInit, WithFactory, NotFrozen, NoSlots, KeywordOnly):
        with pytest.raises(TypeError):
            fast_init(cls)
