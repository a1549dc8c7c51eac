"""The import rules of pyproject.toml's ``[tool.importlinter]`` hold: ``lint-imports`` succeeds.

The repository maps its folders into ``protege`` with setuptools' package-dir (``protege.evals`` is
``evals/``), but import-linter finds a package's modules by walking one directory. So the test lays
the installed package out as symlinks (``protege/evals -> ../evals``, ...) in a temporary folder,
from the same package-dir table, and runs ``lint-imports`` there against the repository's config.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def installed_layout(into: Path) -> Path:
    """``into/protege`` as setuptools installs it, made of symlinks to the working tree."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = into / "protege"
    top.mkdir()
    for source in (ROOT / package_dir["protege"]).glob("*.py"):
        (top / source.name).symlink_to(source)
    for sub in (ROOT / package_dir["protege"]).glob("*/__init__.py"):  # protege.console, ...
        (top / sub.parent.name).symlink_to(sub.parent, target_is_directory=True)
    for name, folder in package_dir.items():
        if name != "protege":
            (top / name.split(".", 1)[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return into


def test_import_contracts_are_kept(tmp_path: Path) -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "lint-imports is missing: pip install -e '.[test]'"
    where = installed_layout(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(where)}
    proc = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
