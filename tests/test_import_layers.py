"""The packages import one way: no cycles between top-level units, and the core never reaches up.

A unit is a top-level package or module of ``cds_service`` (``hooks``, ``smart``, ``runtime``...).
Imports are read with ``ast`` (lazy imports inside functions and ``TYPE_CHECKING`` blocks count),
so the test needs nothing installed and names the offending file.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cds_service"

#: Units at the bottom of the pipeline, and what they must never import.
_WEB_AND_STATE = {"hooks", "smart", "app", "runtime", "store"}
FORBIDDEN: dict[str, set[str]] = {
    "model": _WEB_AND_STATE | {"flask"},
    "assessment": _WEB_AND_STATE | {"flask"},
    "presentation": _WEB_AND_STATE | {"flask"},
    "gather": _WEB_AND_STATE | {"flask"},
}


def _imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def _unit_of(module: str) -> str | None:
    """``cds_service.hooks.views`` -> ``hooks``; ``flask.json`` -> ``flask``; ``cds_service`` ->
    None (the package's own ``__init__``)."""
    parts = module.split(".")
    if parts[0] == "cds_service":
        return parts[1] if len(parts) > 1 else None
    return parts[0]


def _unit_imports() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit (cds_service units, or a third-party top-level name) -> files."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        unit = relative.parts[0].removesuffix(".py")
        if unit == "__init__":
            continue  # the package's lazy create_app
        for module in _imported_modules(path):
            target = _unit_of(module)
            if (
                target is not None
                and target != unit
                and (
                    not module.startswith("cds_service.")
                    or (PACKAGE / target).is_dir()
                    or (PACKAGE / f"{target}.py").is_file()
                )
            ):
                graph[unit][target].add(str(relative))
    return graph


def _internal(graph: dict[str, dict[str, set[str]]]) -> dict[str, set[str]]:
    units = set(graph) | {p.name.removesuffix(".py") for p in PACKAGE.iterdir()}
    return {u: {t for t in targets if t in units} for u, targets in graph.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's shortest form, found by a DFS from each unit (few units)."""
    found: set[tuple[str, ...]] = set()

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                i = path.index(min(path))
                found.add(tuple(path[i:] + path[:i]))
            elif nxt not in path and nxt > start:
                visit(start, nxt, [*path, nxt])

    for unit in sorted(edges):
        visit(unit, unit, [unit])
    return [list(c) for c in sorted(found)]


def test_the_walk_sees_the_units() -> None:
    """Control: the graph has the edges everyone knows about, so an empty result means something."""
    edges = _internal(_unit_imports())
    assert {"gather", "runtime", "store"} <= edges["hooks"]
    assert "gather" in edges["smart"]


def test_no_cycle_between_units() -> None:
    graph = _unit_imports()
    cycles = _cycles(_internal(graph))
    described = [
        " -> ".join([*cycle, cycle[0]])
        + "  ("
        + "; ".join(
            f"{a} -> {b}: {', '.join(sorted(graph[a][b]))}"
            for a, b in zip(cycle, [*cycle[1:], cycle[0]], strict=True)
        )
        + ")"
        for cycle in cycles
    ]
    assert not described, "import cycles between units:\n" + "\n".join(described)


def test_fhir_mappings_imports_nothing_from_the_service() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / "fhir_mappings").rglob("*.py"))
        for module in _imported_modules(path)
        if module.split(".")[0] == "cds_service"
    ]
    assert not offenders


@pytest.mark.parametrize("unit", sorted(FORBIDDEN))
def test_the_core_never_imports_the_edges(unit: str) -> None:
    graph = _unit_imports()
    offenders = {
        target: sorted(files) for target, files in graph[unit].items() if target in FORBIDDEN[unit]
    }
    assert not offenders, f"{unit} imports {offenders}"


def test_the_cycle_finder_names_a_cycle() -> None:
    """Control for the finder itself: a made-up graph with one three-unit cycle."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
