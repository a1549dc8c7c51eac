"""Small helpers shared by every area's CLI: settings, the store, one-line errors, JSON output."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import orjson
import typer

from .settings import Settings, load_settings

_settings: Settings | None = None


def set_settings(settings: Settings) -> None:
    global _settings
    _settings = settings


def settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def open_cli_store(read_only: bool = False):  # -> protege.store.Store
    """Open the configured store, or exit with one line if it cannot be opened (held by another
    process, written by a newer release, not a DuckDB file, ...)."""
    import duckdb

    from protege.store import Store, StoreLockedError
    from protege.store.migrations import SchemaTooNewError

    s = settings()
    try:
        return Store(s.db, data_dir=s.data_path, read_only=read_only)
    except (StoreLockedError, SchemaTooNewError) as exc:
        fail(str(exc))
    except duckdb.Error as exc:
        fail(f"cannot open {s.db}: {str(exc).splitlines()[0]}")


def fail(message: str, code: int = 1) -> NoReturn:
    """Errors are one line on stderr with a non-zero exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
