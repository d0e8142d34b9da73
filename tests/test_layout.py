"""The layout shows the architecture: no import cycle between latentlab's packages, no module past ~600 lines,
and the rules of the house (configs/ and eval/ import no model code; memory and reasoning share only the base)."""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "latentlab"
MAX_LINES = 650


def _unit(path: Path) -> str:
    """The package (subfolder) or top-level module a file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Every latentlab unit ``path`` imports, lazily (inside a function) or not."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("latentlab."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("latentlab.")}
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        graph.setdefault(unit, set()).update(_imports(path) - {unit})
    return graph


def test_no_import_cycle_between_packages():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_foundation_imports_no_task_package():
    graph = _graph()
    for unit in ("configs", "eval", "registry", "errors", "io", "weights", "parts"):
        assert not graph.get(unit, set()) & {"memory", "reasoning", "tasks", "training"}, (unit, graph.get(unit))
    assert "reasoning" not in graph["memory"] and "memory" not in graph["reasoning"]


def test_no_module_is_past_the_size_limit():
    sizes = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
