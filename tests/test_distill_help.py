"""The distill commands' help reads whole at 80 columns, and their short flags mean one thing:
``-m`` is ``--model`` and ``-o`` is ``--out`` wherever they appear."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from protege.cli import app

GROUPS = ("dataset", "feedback", "finetune", "auto", "worker", "students")


def _commands() -> list[tuple[list[str], object]]:
    root = get_command(app)
    out: list[tuple[list[str], object]] = []

    def walk(cmd: object, path: list[str]) -> None:
        out.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])

    for group in GROUPS:
        walk(root.commands[group], [group])
    return out


@pytest.mark.parametrize("path", [p for p, _ in _commands()], ids=lambda p: " ".join(p))
def test_help_is_not_cut_at_80_columns(path: list[str]) -> None:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    cut = [line for line in r.output.splitlines() if "…" in line]
    assert cut == [], "\n".join(cut)


def test_short_flags_mean_model_and_out() -> None:
    seen: dict[str, set[str]] = {"-m": set(), "-o": set()}
    for path, cmd in _commands():
        for param in getattr(cmd, "params", []):
            for flag in ("-m", "-o"):
                if flag in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
                    seen[flag].add(next(o for o in param.opts if o.startswith("--")))
    assert seen == {"-m": {"--model"}, "-o": {"--out"}}


def test_renamed_options_keep_their_long_names_as_hidden_aliases(make_db) -> None:
    db = make_db("h")
    for old, new in (("--learning-rate-multiplier", "--lr-multiplier"), ("--gradient-accumulation-steps", "--grad-accum-steps")):
        value = "x" if "multiplier" in old else "y"
        for flag in (old, new):
            r = CliRunner().invoke(app, ["--db", db, "finetune", "start", "--backend", "lora", flag, value])
            # the value reached the option (and was refused as a number), whichever name was used
            assert r.exit_code != 0 and ("got 'x'" in r.output or f"Invalid value for '{flag}'" in r.output), (flag, r.output)
        help_text = CliRunner().invoke(app, ["finetune", "start", "--help"], env={"COLUMNS": "200"}).output
        assert new in help_text and old not in help_text
