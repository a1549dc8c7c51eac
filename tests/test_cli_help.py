"""`--help` of every command reads well at 80 columns: nothing cut off, no Python types, no markup eaten.

It walks the whole command tree (every area's group, as mounted by protege/cli.py) and renders
each page through ``protege.cli.main`` with ``COLUMNS=80``, as a terminal of that width would.
"""

from __future__ import annotations

import re

import pytest

from protege.cli import command, main

_PLACEHOLDER = re.compile(r"<(bool|str|int|float|path|list\[[^\]]*\]|[a-z_]+\[[^\]]*\])>")


def _every_command() -> list[list[str]]:
    found: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        found.append(path)
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            walk(sub, path + [name])

    walk(command(), [])
    return found


def _help(path: list[str], monkeypatch, capsys) -> str:
    from protege import clikit

    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as done:
        try:
            main([*path, "--help"])
        finally:
            clikit.forward_to(None)
    assert done.value.code in (0, None), path
    out, err = capsys.readouterr()
    assert err == "", path
    return out


def _help_texts(cmd) -> list[str]:
    texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
    return [t for t in texts if t]


def test_every_help_page_fits_80_columns(monkeypatch, capsys):
    paths = _every_command()
    assert len(paths) > 40  # every area's commands are mounted
    problems = []
    for path in paths:
        page = _help(path, monkeypatch, capsys)
        where = " ".join(["protege", *path])
        if "…" in page:
            problems.append(f"{where}: cut off ({page[page.index('…') - 30:page.index('…') + 1]!r})")
        if m := _PLACEHOLDER.search(page):
            problems.append(f"{where}: Python type placeholder {m.group(0)}")
        if "╭" in page or "│" in page:
            problems.append(f"{where}: boxed (Rich) help")
        wide = [line for line in page.splitlines() if len(line) > 80]
        if wide:
            problems.append(f"{where}: {len(wide)} lines wider than 80 columns")
    assert problems == []


def test_square_brackets_in_help_are_shown_literally(monkeypatch, capsys):
    """Rich read ``[[policy]]`` as markup and printed nothing; every help text that has square
    brackets shows them."""
    checked = 0
    for path in _every_command():
        cmd = command()
        for name in path:
            cmd = cmd.commands[name]
        bracketed = [t for t in _help_texts(cmd) if "[[policy]]" in t]
        if not bracketed:
            continue
        page = " ".join(_help(path, monkeypatch, capsys).split())
        assert "[[policy]]" in page, path
        checked += 1
    assert checked >= 2  # auto validate and auto apply say "[[policy]] tables"


def test_group_listings_show_whole_first_sentences(monkeypatch, capsys):
    raw = _help(["auto"], monkeypatch, capsys)
    page = " ".join(raw.split())
    assert "Stop starting new cycles for this policy (its live route stays; roll it back to remove it)." in page
    listing = raw.split("Commands:", 1)[1]
    assert not [line for line in listing.splitlines() if line.rstrip().endswith("...")]


def test_options_show_click_metavars(monkeypatch, capsys):
    page = _help(["dataset", "build"], monkeypatch, capsys)
    assert re.search(r"^  --prune-system-prompt\s", page, re.M)  # the whole flag name
    assert re.search(r"^  --name TEXT\s", page, re.M)
    assert re.search(r"^  --seed INTEGER\s", page, re.M)
    assert re.search(r"^  --allow-truncated\s+Keep", page, re.M)  # a flag takes no value


def test_metadata_short_flag_is_gone_model_keeps_m(monkeypatch, capsys):
    """``-m`` means ``--model`` everywhere (finetune start), never ``--metadata``."""
    for path in _every_command():
        cmd = command()
        for name in path:
            cmd = cmd.commands[name]
        for param in cmd.params:
            if "-m" in getattr(param, "opts", []):
                assert "--model" in param.opts, (path, param.opts)
            if "-o" in getattr(param, "opts", []):
                assert param.name in ("out", "output"), (path, param.opts)
