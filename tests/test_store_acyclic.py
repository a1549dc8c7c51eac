"""No import cycles between store modules, function-level imports included.

import-linter's ``acyclic_siblings`` contract is not on main yet (main has no [tool.importlinter]
section), so this builds the graph itself: every ``from .x import`` / ``from protege.store.x import``
/ ``from protege.store import`` anywhere in a module (inside functions too, which is where cycles
hid: migrations imported evals/jobs/auto to run their DDL, and they imported migrations back), and
asserts the graph has no cycle. ``store/__init__`` re-exports the package, so an import of
``protege.store`` from a submodule counts as an edge to every module ``__init__`` imports.
Each module must also import on its own, first, in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

STORE = Path(__file__).resolve().parent.parent / "store"
MODULES = sorted(p.stem for p in STORE.glob("*.py"))


def store_imports(module: str) -> set[str]:
    """Store modules that ``module`` imports anywhere in its body."""
    tree = ast.parse((STORE / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module
            elif node.level == 0 and node.module and (node.module == "protege.store" or node.module.startswith("protege.store.")):
                base = node.module[len("protege.store."):] if node.module != "protege.store" else None
            else:
                continue
            if base:
                out.add(base.split(".")[0])
            else:  # from . import x / from protege.store import x: a submodule, or the package itself
                for alias in node.names:
                    out.add(alias.name if alias.name in MODULES else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "protege.store":
                    out.add("__init__")
                elif alias.name.startswith("protege.store."):
                    out.add(alias.name.split(".")[2])
    out.discard(module)
    return out & set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_store_import_graph_has_no_cycle() -> None:
    graph = {m: store_imports(m) for m in MODULES}
    assert "evals" not in graph["migrations"] and graph["migrations"] == set()  # literal SQL: imports no table module
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_check_sees_function_level_imports() -> None:
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "db" in store_imports("ids")  # ids imports db inside a function


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__"])
def test_each_store_module_imports_alone(module: str) -> None:
    proc = subprocess.run([sys.executable, "-c", f"import protege.store.{module}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
