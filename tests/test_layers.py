"""The house's shape, checked: imports point down the layers (pyproject.toml's import-linter
contracts), and no module of the library takes part in an import circle, function-level imports
included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

PROJECT = Path(__file__).resolve().parents[1]
LONGEST_FUNCTION = 80  # lines: a library function longer than this wants splitting


def test_the_layer_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "0 broken" in result.stdout


def _cycle(graph: grimp.ImportGraph, modules: set[str]) -> list[str] | None:
    """One import circle among `modules` (a depth-first search), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module], _ = 1, path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module) & modules):
            if state.get(imported) == 1:
                return [*path[path.index(imported) :], imported]
            if imported not in state and (found := visit(imported)):
                return found
        state[module], _ = 2, path.pop()
        return None

    for module in sorted(modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_module_of_the_library_is_in_an_import_circle():
    graph = grimp.build_graph("spine_model")  # every import statement, inside functions too
    modules = {module for module in graph.modules if module.startswith("spine_model")}
    assert len(modules) > 40
    assert _cycle(graph, modules) is None, " -> ".join(_cycle(graph, modules))


def test_the_circle_check_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    assert _cycle(graph, {"a", "b", "c"}) is None
    graph.add_import(importer="c", imported="a")
    assert _cycle(graph, {"a", "b", "c"}) == ["a", "b", "c", "a"]


def test_no_library_function_is_longer_than_80_lines():
    long = []
    for path in sorted((PROJECT / "spine_model").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(PROJECT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
