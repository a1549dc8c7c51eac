"""`protege eval run|list|show|report` through the real CLI app, on each store backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.cli import app
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.evals import seeded_store_file, student_reply

runner = CliRunner()


@pytest.fixture
def dbfile(make_db) -> str:
    return seeded_store_file(make_db("c"))


@pytest.fixture
def fake():
    f = start_fake_openai(student_reply())
    yield f
    f.stop()


def cli(dbfile: str, *args: str):
    return runner.invoke(app, ["--db", dbfile, "eval", *args])


def test_run_list_show_report(dbfile: str, fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLI_EVAL_KEY", "sk-cli-test")
    res = cli(dbfile, "run", "--model", "gpt-4o", "--metadata", "task=geo", "--since", "2023-11-14T22:13:21",
              "--limit", "6", "--candidate", f"name=mini,model=gpt-4o-mini,base_url={fake.base_url},api_key_env=CLI_EVAL_KEY",
              "--candidate", f"name=short,model=gpt-4o-mini,base_url={fake.base_url},system_prompt=drop",
              "--metric", "exact_match", "--metric", "chrf", "--seed", "3", "--resamples", "100", "--json")
    assert res.exit_code == 0, res.stderr
    run = json.loads(res.stdout)
    assert run["status"] == "completed" and run["n_items"] == 6 and run["seed"] == 3
    assert run["result_counts"] == {"total": 12, "completed": 12, "errored": 0, "pending": 0}
    assert run["source"]["since"] == 1_700_000_001  # ISO dates are UTC
    assert len(fake.chat_requests) == 12

    res = cli(dbfile, "list", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["data"][0]["id"] == run["id"]
    res = cli(dbfile, "list")
    assert run["id"] in res.stdout and "completed" in res.stdout
    res = cli(dbfile, "show", run["id"])
    assert json.loads(res.stdout)["id"] == run["id"]

    res = cli(dbfile, "report", run["id"], "--format", "md")
    assert res.exit_code == 0 and res.stdout.startswith(f"# Eval run `{run['id']}`") and "## Headline" in res.stdout
    out = tmp_path / "r.html"
    prices = tmp_path / "prices.toml"
    prices.write_text('[models.gpt-4o-mini]\ninput = 0.0\noutput = 0.0\n')
    res = cli(dbfile, "report", run["id"], "--format", "html", "-o", str(out), "--prices", str(prices))
    assert res.exit_code == 0, res.stderr
    assert "<svg" in out.read_text() and "0.00×" in out.read_text()
    res = cli(dbfile, "report", run["id"], "--format", "json")
    assert json.loads(res.stdout)["headline"][1]["system"] == "mini"

    # Resuming a finished run generates nothing new.
    res = cli(dbfile, "run", "--resume", run["id"], "--json")
    assert res.exit_code == 0 and len(fake.chat_requests) == 12


def test_spec_file_and_items_file(dbfile: str, fake, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"messages": [{"role": "user", "content": "Capital of Peru?"}], "reference": "Lima"}\n')
    spec = tmp_path / "spec.toml"
    spec.write_text(f'''
metrics = ["exact_match"]
n_resamples = 50
items_file = "{items}"

[[candidates]]
name = "local"
model = "student-1"
base_url = "{fake.base_url}"
system_prompt = "Answer briefly."
price_input = 0.01
price_output = 0.02
''')
    res = cli(dbfile, "run", "--spec", str(spec), "--name", "from-spec")
    assert res.exit_code == 0, res.stderr
    assert "local (student-1): exact_match 1.000" in res.stdout
    body = fake.chat_requests[0]["json"]
    assert body["model"] == "student-1" and body["messages"][0] == {"role": "system", "content": "Answer briefly."}


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--model", "gpt-4o", "--candidate", "model"], "expected key=value"),
        (["run", "--model", "gpt-4o", "--candidate", "model=m,colour=red"], "unknown candidate field(s): colour"),
        (["run", "--model", "gpt-4o", "--candidate", "model=m", "--metric", "nope"], "unknown metric"),
        (["run", "--model", "nobody", "--candidate", "model=m"], "no items matched"),
        (["run", "--model", "gpt-4o", "--candidate", "model=m", "--since", "yesterday"], "--since: expected an ISO date"),
        (["run", "--model", "gpt-4o", "--candidate", "model=m", "--metadata", "oops"], "--metadata: expected KEY=VALUE"),
        (["run", "--items", "/nonexistent.jsonl", "--candidate", "model=m"], "cannot read /nonexistent.jsonl"),
        (["run", "--model", "gpt-4o", "--candidate", "model=m,api_key_env=SURELY_UNSET_VAR"], "SURELY_UNSET_VAR is not set"),
        (["run", "--resume", "evalrun_nope"], "no eval run evalrun_nope"),
        (["report", "evalrun_nope"], "no eval run evalrun_nope"),
        (["report", "evalrun_nope", "--format", "pdf"], "--format must be one of"),
        (["report", "evalrun_nope", "--prices", "/nonexistent.toml"], "cannot read price table"),
    ],
)
def test_errors_are_one_line(dbfile: str, args: list[str], message: str) -> None:
    res = cli(dbfile, *args)
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
