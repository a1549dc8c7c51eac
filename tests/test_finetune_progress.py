"""A local student's fine-tune records its steps as a LoRA job does (step, total_steps, phase), and
`finetune start` waiting on it draws a bar of those steps on stderr (never in --json output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from protege.distill.finetune import jobs
from protege.store import Store
from typer.testing import CliRunner

from protege.cli import app
from tests.fixtures.auto import corpus, teacher_answer
from tests.fixtures.terminal import run_protege


def _train_file(path: Path) -> str:
    with open(path, "w") as fh:
        for q, label in corpus()[:120]:
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": teacher_answer(label)}]}) + "\n")
    return str(path)


def test_local_job_records_its_steps(tmp_path, make_db) -> None:
    store = Store(make_db("s"))
    seen: list[tuple[int, int]] = []
    job = jobs.start_job(store, backend="local", training_file=_train_file(tmp_path / "t.jsonl"), name="steps")
    job = jobs.wait_job(store, job["id"], interval=0.01, timeout=120,
                        on_update=lambda j: seen.append(((j.get("result") or {}).get("step", 0), (j.get("result") or {}).get("total_steps", 0))))
    assert job["status"] == "succeeded"
    assert job["result"]["step"] == job["result"]["total_steps"] == 5 and job["result"]["phase"] == "saved"
    steps = [s for s, _ in seen]
    assert steps == sorted(steps) and steps[-1] == 5  # steps only move forward, to the end
    store.close()


def test_cli_wait_shows_the_steps_and_json_stays_clean(tmp_path, make_db) -> None:
    train = _train_file(tmp_path / "t.jsonl")
    db = make_db("c")
    r = CliRunner().invoke(app, ["--db", db, "finetune", "start", "--backend", "local", "-t", train, "--name", "a", "--wait"])
    assert r.exit_code == 0, r.output
    assert "training step 5/5 (saved)" in r.stderr and "protege/a@v1" in r.stdout
    r = CliRunner().invoke(app, ["--db", db, "finetune", "start", "--backend", "local", "-t", train, "--name", "b", "--wait", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fine_tuned_model"] == "protege/b@v1" and "training step" not in r.stderr


# What a terminal shows (a process on a pty, ~10-40 s): DuckDB only; the steps it draws come from the
# store, read on PostgreSQL too by test_cli_wait_shows_the_steps_and_json_stays_clean.
@pytest.mark.backends("duckdb")
def test_the_bar_is_drawn_on_a_terminal(tmp_path, make_db) -> None:
    train = _train_file(tmp_path / "t.jsonl")
    code, out, err = run_protege(["--db", make_db("p"), "finetune", "start", "--backend", "local",
                                  "-t", train, "--name", "tty", "--wait", "--poll-interval", "0.01"])
    assert code == 0, err
    assert "training step 5/5" in err and "5/5" in err and "protege/tty@v1" in out
