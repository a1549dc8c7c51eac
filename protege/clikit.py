"""Small helpers shared by every area's CLI: settings, the store, one-line errors, JSON output."""

from __future__ import annotations

import contextvars
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NoReturn

import orjson
import typer

from .settings import Settings, load_settings

_settings: Settings | None = None

# Inside `protege serve`, a CLI command sent to POST /protege/v1/cli runs with the server's own
# settings and store (protege/cli_api.py sets this for the command's context only): a context
# variable, so the server's other requests and threads never see it.
_served: contextvars.ContextVar[tuple[Settings, Any] | None] = contextvars.ContextVar("protege_cli_served", default=None)

# Commands that only read the store: on a database file that does not exist they say so in one
# line instead of creating an empty store (``open_cli_store(must_exist=None)`` looks them up by
# the running command's path, so the areas' commands need not pass it).
READ_COMMANDS = frozenset({
    "completions list", "completions show", "completions stats", "completions export",
    "dataset list", "dataset show",
    "eval list", "eval show", "eval report",
    "auto list", "auto show", "auto status", "auto decisions", "auto routes",
    "finetune status", "finetune list", "finetune events", "finetune export",
    "feedback list", "students list", "store backup",
})


class ServedElsewhere(Exception):
    """Raised by :func:`open_cli_store` when a live server holds the database: ``protege.cli.main``
    catches it and sends the command to that server instead (``record``: ``store.served``'s record)."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record.get("url"))
        self.record = record


# Set by protege.cli.main when a live server records itself beside the selected database.
_forward_record: dict[str, Any] | None = None


def forward_to(record: dict[str, Any] | None) -> None:
    """Make :func:`open_cli_store` hand the command to the server of ``record`` (None: open locally)."""
    global _forward_record
    _forward_record = record


def set_settings(settings: Settings) -> None:
    """The CLI's settings (from --db/--data-dir); ignored for a command running inside the server,
    which keeps the server's settings (a global set there would change the server's own)."""
    global _settings
    if _served.get() is not None:
        return
    _settings = settings


def settings() -> Settings:
    global _settings
    served = _served.get()
    if served is not None:
        return served[0]
    if _settings is None:
        _settings = load_settings()
    return _settings


class _BorrowedStore:
    """The server's own Store lent to one CLI command: everything is the store's, but ``close()``
    does nothing (the server keeps serving from it)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def close(self) -> None:
        pass


@contextmanager
def served_by(server_settings: Settings, store: Any) -> Iterator[None]:
    """Run CLI commands in this context against a running server's settings and store."""
    token = _served.set((server_settings, store))
    try:
        yield
    finally:
        _served.reset(token)


def in_server() -> bool:
    """True while a command runs inside ``protege serve`` (through POST /protege/v1/cli)."""
    return _served.get() is not None


def _command_path() -> str:
    """``"completions list"`` for the running command ("" outside a command)."""
    import importlib

    for name in ("typer._click.globals", "click"):  # Typer >= 0.25 carries its own click
        try:
            get = getattr(importlib.import_module(name), "get_current_context", None)
        except ImportError:
            continue
        ctx = get(silent=True) if get is not None else None
        if ctx is not None:
            return " ".join(ctx.command_path.split()[1:])
    return ""


def open_cli_store(read_only: bool = False, must_exist: bool | None = None):  # -> protege.store.Store
    """Open the configured store, or exit with one line if it cannot be opened (held by another
    process, written by a newer release, not a DuckDB file, ...).

    ``must_exist``: refuse a database file that does not exist (one line) rather than create an
    empty one; None decides by the running command (:data:`READ_COMMANDS`, or ``read_only``).
    Inside the server this is the server's own store; while a live server holds the file, the
    CLI's command goes to that server (:class:`ServedElsewhere`)."""
    import duckdb

    from protege.store import SchemaTooNewError, Store, StoreLockedError, without_password

    served = _served.get()
    if served is not None:
        return _BorrowedStore(served[1])
    if _forward_record is not None:
        raise ServedElsewhere(_forward_record)
    s = settings()
    if must_exist is None:
        must_exist = read_only or _command_path() in READ_COMMANDS
    if must_exist and not _db_exists(s.db):
        fail(f"no store at {s.db}: start `protege serve` or pass --db")
    try:
        return Store(s.db, data_dir=s.data_path, read_only=read_only)
    except (StoreLockedError, SchemaTooNewError) as exc:
        fail(str(exc))
    except duckdb.Error as exc:
        fail(f"cannot open {s.db}: {str(exc).splitlines()[0]}")
    except Exception as exc:  # a PostgreSQL URL: psycopg's errors (refused, bad password, no database)
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        fail(f"cannot open {without_password(s.db)}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")


def _db_exists(db: str) -> bool:
    import os

    return db.startswith(":memory:") or "://" in db or os.path.exists(db)


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
