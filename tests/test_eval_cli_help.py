"""`protege eval ...` help and flags: readable at 80 columns, metric names from the registry, one list
in the unknown-metric error, ``--out``/``-o`` and ``-m``/``--model``, ``eval show --text``.

Help is rendered by the real ``protege`` process (``COLUMNS=80``), as a user's terminal shows it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.cli import app
from protege.evals.metrics import available_metrics
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.evals import seeded_store_file, student_reply

runner = CliRunner()
COMMANDS = ["run", "list", "show", "report"]


def help_at_80(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "protege", "eval", *args, "--help"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def words(text: str) -> str:
    """The help as one line of words: box borders and the wrapping removed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_not_cut_at_80_columns(command: str) -> None:
    text = help_at_80(command)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text, text


def test_run_help_lists_candidate_fields_and_metrics() -> None:
    text = words(help_at_80("run"))
    for field in ("name", "model", "base_url", "api_key_env", "system_prompt", "azure_endpoint", "api_version",
                  "timeout", "price_input", "price_output", "params.KEY"):
        assert f"{field} " in text or f"{field}," in text, field
    assert "--candidate name=student,model=protege/topics,system_prompt=drop" in text
    # Every registered metric, from the registry (not a hand-written list).
    listed = text.split("Metric (repeatable; default exact_match, chrf):", 1)[1]
    for name in available_metrics():
        assert re.search(rf"(?<![\w+]){re.escape(name)}(?![\w+])", listed), name
    assert "-m, --model" in text  # plain click help: the short name first


@pytest.fixture
def dbfile(make_db) -> str:
    return seeded_store_file(make_db("h"))


def test_unknown_metric_lists_the_metrics_once(dbfile: str) -> None:
    res = runner.invoke(app, ["--db", dbfile, "eval", "run", "-m", "gpt-4o", "--candidate", "model=x", "--metric", "nope"])
    assert res.exit_code != 0
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("error: unknown metric 'nope'")
    assert line.count("available") == 1 and line.count("exact_match") == 1


def test_short_flags_out_and_show_text(dbfile: str, tmp_path: Path) -> None:
    fake = start_fake_openai(student_reply())
    try:
        res = runner.invoke(app, ["--db", dbfile, "eval", "run", "-m", "gpt-4o", "--candidate",
                                  f"name=mini,model=gpt-4o-mini,base_url={fake.base_url}", "--metric", "exact_match",
                                  "--resamples", "50", "--json"])
    finally:
        fake.stop()
    assert res.exit_code == 0, res.stderr
    run = json.loads(res.stdout)
    assert run["n_items"] == 8 and run["source"]["model"] == "gpt-4o"  # -m is --model

    out = tmp_path / "r.md"
    res = runner.invoke(app, ["--db", dbfile, "eval", "report", run["id"], "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    assert out.read_text().startswith(f"# Eval run `{run['id']}`") and res.stdout == ""
    res = runner.invoke(app, ["--db", dbfile, "eval", "report", run["id"], "--output", str(out)])
    assert res.exit_code != 0  # the old spelling is gone: one name, --out, everywhere

    res = runner.invoke(app, ["--db", dbfile, "eval", "show", run["id"], "--text"])
    assert res.exit_code == 0, res.stderr
    with pytest.raises(json.JSONDecodeError):
        json.loads(res.stdout)
    assert res.stdout.startswith(f"{run['id']}: completed")
    assert "mini: 8 answered, 0 errors, 0 pending of 8" in res.stdout
    assert "mini (gpt-4o-mini): exact_match 0.875 vs teacher 1.000" in res.stdout
    res = runner.invoke(app, ["--db", dbfile, "eval", "show", run["id"]])
    assert json.loads(res.stdout)["id"] == run["id"]  # JSON stays the default
