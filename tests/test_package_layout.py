"""The package's shape: modules import each other without cycles, stay small, and the files that ship with checkpoints
import only torch, transformers and their flat siblings."""

import ast
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "jetvit_hf"
MAX_MODULE_LINES = 800
SHIPPED = PACKAGE / "models" / "jetvit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve_import(node: ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> list[str]:
    """The package modules an import statement loads (`from . import x` may name a module or a name)."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = importer.split(".")
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        targets.append(candidate if candidate in known else base)
    return [t for t in targets if t in known]


def import_graph() -> dict[str, set[str]]:
    """module -> package modules it imports, counting imports inside functions too (they are still dependencies)."""
    found = modules()
    known = set(found)
    graph = {}
    for name, path in found.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                edges.update(resolve_import(node, name, path.name == "__init__.py", known))
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in known)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_sees_relative_imports():
    graph = import_graph()
    assert "jetvit_hf.models.jetvit.configuration_jetvit" in graph["jetvit_hf.models.jetvit.modeling_jetvit"]
    assert "jetvit_hf.layouts" in graph["jetvit_hf.cli"]


def test_no_import_cycle_inside_the_package():
    # Package __init__ files re-export their modules, so an edge into a package is an edge into its __init__ only.
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_small(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines (limit {MAX_MODULE_LINES})"


def test_shipped_files_import_only_torch_transformers_and_siblings():
    allowed = {"torch", "transformers", "triton", "math", "functools", "dataclasses", "typing", "collections", "os"}
    for path in SHIPPED.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and (SHIPPED / f"{node.module}.py").is_file(), f"{path.name}: {ast.unparse(node)}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                roots = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for root in roots:
                    assert root.split(".")[0] in allowed, f"{path.name} imports {root}"


def test_docstrings_stand_alone():
    """No docstring or comment points at documents that are not in the repository."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        found = [phrase for phrase in ("notes/", "DESIGN.md", "evaluation notes", "performance.md") if phrase in text]
        assert not found, f"{path.relative_to(PACKAGE.parent)} refers to {found}"
