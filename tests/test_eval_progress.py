"""`protege eval run` shows progress on a terminal, for generation and for scoring, and nothing of it
reaches ``--json`` output or a stderr that is not a terminal.

The CLI runs as a real process whose stderr is a pseudo-terminal (what a user's shell gives it),
against a DuckDB file and the fake OpenAI server on 127.0.0.1.
"""

from __future__ import annotations

import json
import pytest

from protege.store import Store
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.evals import seed_completions, student_reply
from tests.fixtures.terminal import run_protege

# Progress drawing does not depend on the store, and each test here starts a CLI process (the costly
# part): DuckDB only. A CLI eval run as its own process on PostgreSQL is test_eval_runs.py's
# test_sigkilled_cli_run_resumes and test_ctrl_c_cancels_cleanly_and_says_how_to_resume (both backends).
pytestmark = pytest.mark.backends("duckdb")


@pytest.fixture
def setup(store_db: str):
    db = store_db
    s = Store(db)
    seed_completions(s)
    s.close()
    fake = start_fake_openai(student_reply(), delay=0.05)
    yield str(db), fake
    fake.stop()


def run_on_terminal(args: list[str], tty: bool = True) -> tuple[int, str, str]:
    """(exit code, stdout, stderr as the terminal saw it) of ``protege ARGS``."""
    return run_protege(args, tty=tty)


def test_bars_for_generation_and_scoring_on_a_terminal(setup) -> None:
    db, fake = setup
    code, out, err = run_on_terminal(["--db", db, "eval", "run", "--model", "gpt-4o", "--candidate",
                                      f"name=mini,model=gpt-4o-mini,base_url={fake.base_url}", "--concurrency", "2",
                                      "--metric", "exact_match", "--resamples", "50"])
    assert code == 0, err
    assert "generating" in err and "scoring" in err, err
    assert "%" in err  # a bar, not just a label
    assert out.startswith("evalrun_") and "completed (8 outputs, 0 errors)" in out  # stdout holds only the result


def test_json_output_has_no_bar(setup) -> None:
    db, fake = setup
    code, out, err = run_on_terminal(["--db", db, "eval", "run", "--model", "gpt-4o", "--candidate",
                                      f"name=mini,model=gpt-4o-mini,base_url={fake.base_url}", "--metric", "exact_match",
                                      "--resamples", "50", "--json"])
    assert code == 0, err
    assert json.loads(out)["status"] == "completed"
    assert "generating" not in err and "scoring" not in err


def test_plain_lines_when_stderr_is_not_a_terminal(setup) -> None:
    db, fake = setup
    code, out, err = run_on_terminal(["--db", db, "eval", "run", "--model", "gpt-4o", "--candidate",
                                      f"name=mini,model=gpt-4o-mini,base_url={fake.base_url}", "--metric", "exact_match",
                                      "--resamples", "50"], tty=False)
    assert code == 0, err
    # One plain line per phase for a log, no bar, no terminal escapes.
    assert "generating: 8 answers" in err.splitlines() and "\x1b[" not in err and "%" not in err
    assert "completed (8 outputs, 0 errors)" in out
