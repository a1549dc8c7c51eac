"""The CLI's click command tree, prepared once: help that reads well, and paths resolved for a caller.

Every area builds its commands with Typer; ``protege.cli.command()`` turns them into one click
tree and passes it through :func:`prepare`, so the fixes below hold for every command without
each area repeating them:

- Help is click's plain formatter (``rich_markup_mode=None``): Rich's boxed tables cut option
  names and help text at 80 columns (``--prune-system-pro…``) and read ``[[policy]]`` as markup.
- Options show click's classic metavars (``TEXT``, ``INTEGER``, ``PATH``) instead of Typer's
  Python types (``<str>``, ``<list[str]>``); flags and arguments show none.
- A group lists each command's whole first paragraph (wrapped), not a cut-off prefix.
- Path parameters are resolved against the caller's directory while a command runs for a CLI
  elsewhere (``POST /protege/v1/cli``): :func:`caller_paths`. The server never changes its own
  working directory (it is process-wide).

The root options (``--db``, ``--data-dir``) may also come after the subcommand:
:func:`hoist_root_options` moves them to the front.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, get_args

import typer.core

# Parameters typed ``str`` in the areas' commands that name a file or directory (the areas may
# type them as pathlib.Path instead; then they are found by type and can leave this table).
STR_PATH_PARAMS: dict[str, frozenset[str]] = {
    "auto validate": frozenset({"file"}),
    "auto apply": frozenset({"file"}),
    "eval run": frozenset({"spec_file", "items"}),
    "eval report": frozenset({"output", "prices"}),
    "finetune start": frozenset({"training_file", "validation_file"}),
    "finetune export": frozenset({"out"}),
}

_TYPE_METAVARS = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN", dt.datetime: "DATETIME"}

# (caller's directory, {absolute path given to the command: what the caller typed})
_caller: contextvars.ContextVar[tuple[str, dict[str, str]] | None] = contextvars.ContextVar("protege_cli_caller", default=None)


class _Argument(typer.core.TyperArgument):
    """An argument shown by its name only (``FILE``), as click shows it, not ``FILE <str>``."""

    def display_type_rich(self, ctx: Any) -> str | None:  # noqa: ARG002 - Typer's signature
        return None


def prepare(root: Any) -> Any:
    """Apply the help fixes and the path resolution to every command of ``root`` (in place)."""
    _walk(root, "")
    return root


def _walk(cmd: Any, path: str) -> None:
    if hasattr(cmd, "rich_markup_mode"):
        cmd.rich_markup_mode = None
    if getattr(cmd, "help", None) and not getattr(cmd, "short_help", None):
        first = cmd.help.strip().split("\n\n", 1)[0]
        cmd.short_help = " ".join(first.replace("\b", "").split())
    str_paths = STR_PATH_PARAMS.get(path, frozenset())
    for param in cmd.params:
        if isinstance(param, typer.core.TyperArgument) and type(param) is typer.core.TyperArgument:
            param.__class__ = _Argument
            if param.metavar is None:
                param.metavar = (param.name or "value").upper()
        elif param.param_type_name == "option" and param.metavar is None and not getattr(param, "is_flag", False) \
                and not getattr(param, "count", False):
            param.metavar = _metavar(param)
        if _is_path(param) or param.name in str_paths:
            _resolve_for_caller(param)
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        _walk(sub, f"{path} {name}".strip())


def _metavar(param: Any) -> str:
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return "VALUE"
    if desc.is_choice and desc.choices:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices) + "]"
    if desc.is_path:
        return "PATH"
    annotation = desc.annotation
    if desc.is_list:
        annotation = (get_args(annotation) or (str,))[0]
    return _TYPE_METAVARS.get(annotation, "VALUE")


def _is_path(param: Any) -> bool:
    desc = getattr(param, "type_descriptor", None)
    if desc is not None:
        return bool(desc.is_path)
    import click

    return isinstance(getattr(param, "type", None), click.Path)


def _resolve_for_caller(param: Any) -> None:
    original = param.process_value

    def process_value(ctx: Any, value: Any) -> Any:
        return original(ctx, _resolve(value))

    param.process_value = process_value


def _resolve(value: Any) -> Any:
    caller = _caller.get()
    if caller is None or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    if not isinstance(value, (str, os.PathLike)):
        return value  # click's "not given" sentinel, a number, ...
    text = os.fspath(value)
    if not text or text == "-" or os.path.isabs(text):
        return value
    cwd, shown = caller
    absolute = os.path.join(cwd, text)
    shown[absolute] = text
    return absolute if isinstance(value, str) else Path(absolute)


@contextmanager
def caller_paths(cwd: str) -> Iterator[dict[str, str]]:
    """Relative path arguments of commands run in this context are taken from ``cwd``. Yields
    ``{absolute: as typed}`` for the paths resolved, so output can show them as the caller typed."""
    shown: dict[str, str] = {}
    token = _caller.set((cwd, shown))
    try:
        yield shown
    finally:
        _caller.reset(token)


# -- argv -------------------------------------------------------------------------------------


def _root_options(root: Any) -> dict[str, Any]:
    """``{"--db": param, ...}``: the root's options that take a value."""
    found: dict[str, Any] = {}
    for param in root.params:
        if param.param_type_name == "option" and not getattr(param, "is_flag", False):
            for opt in param.opts:
                found[opt] = param
    return found


def hoist_root_options(root: Any, args: list[str]) -> list[str]:
    """Move the root's options (``--db x``, ``--data-dir=y``) that come after the subcommand to the
    front, so ``protege completions stats --db x.duckdb`` means ``protege --db x.duckdb completions stats``."""
    opts = _root_options(root)
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        name = arg.split("=", 1)[0]
        if name in opts and name.startswith("--"):
            if "=" in arg:
                front.append(arg)
                i += 1
                continue
            if i + 1 < len(args):
                front += [arg, args[i + 1]]
                i += 2
                continue
        rest.append(arg)
        i += 1
    return front + rest


def split_root_options(root: Any, args: list[str]) -> tuple[dict[str, str], list[str]]:
    """``({"db": ..., "data_dir": ...}, the rest)`` for args whose root options lead (after hoisting)."""
    opts = _root_options(root)
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name not in opts:
            break
        if eq:
            found[opts[name].name] = value
            i += 1
        elif i + 1 < len(args):
            found[opts[name].name] = args[i + 1]
            i += 2
        else:
            break
    return found, args[i:]


def command_path(root: Any, args: list[str]) -> str:
    """``"completions list"``: the command that ``args`` (root options first) would run."""
    _, rest = split_root_options(root, args)
    cmd, names = root, []
    for arg in rest:
        commands = getattr(cmd, "commands", None)
        if not commands or arg not in commands:
            break
        cmd = commands[arg]
        names.append(arg)
    return " ".join(names)


def help_width(columns: int) -> int:
    """The width click formats help at for a terminal of ``columns`` (click's own rule)."""
    return max(min(columns, 80) - 2, 50)
