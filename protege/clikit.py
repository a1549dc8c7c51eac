"""Small helpers shared by every area's CLI: settings, the store, one-line errors, JSON output."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NoReturn

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

    from protege.store import SchemaTooNewError, Store, StoreLockedError

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


def parse_time(value: str | None, option: str) -> int | None:
    """Unix seconds, or an ISO date / date-time (UTC unless it says otherwise)."""
    import datetime as dt
    import re

    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text))
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option}: expected an ISO date (2025-01-31), date-time or Unix seconds, not {value!r}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())


def parse_pairs(items: list[str] | None, option: str = "--metadata") -> dict[str, str]:
    """Repeated ``KEY=VALUE`` options as a dict."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{option}: expected KEY=VALUE, not {item!r}")
        out[key] = value
    return out


@contextmanager
def progress(total: float | None, description: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; a no-op otherwise (scripts, CI, ``--json``
    output on stdout is never touched). Yields ``advance(n)``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
