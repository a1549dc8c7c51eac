"""``protege.store`` is the store's whole public surface: every name in its ``__all__`` resolves,
and code outside ``store/`` imports only those names or a documented table module."""

from __future__ import annotations

import ast
from pathlib import Path

import protege.store as store

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ["proxy", "evals", "distill", "protege", "bench"]


def test_every_public_name_resolves() -> None:
    missing = [name for name in store.__all__ if not hasattr(store, name)]
    assert missing == []
    for name in store.TABLE_MODULES:
        assert getattr(store, name).__name__ == f"protege.store.{name}"


def test_callers_use_the_public_surface_only() -> None:
    allowed_modules = {"protege.store"} | {f"protege.store.{m}" for m in store.TABLE_MODULES}
    bad = []
    for folder in OUTSIDE:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("protege.store"):
                    if node.module not in allowed_modules:
                        bad.append(f"{path.relative_to(ROOT)}: from {node.module} import ...")
                    elif node.module == "protege.store":
                        bad += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names if a.name not in store.__all__]
                elif isinstance(node, ast.Import):
                    bad += [f"{path.relative_to(ROOT)}: import {a.name}" for a in node.names
                            if a.name.startswith("protege.store.") and a.name not in allowed_modules]
    assert bad == []
