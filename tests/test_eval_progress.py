"""`protege eval run` shows progress on a terminal, for generation and for scoring, and nothing of it
reaches ``--json`` output or a stderr that is not a terminal.

The CLI runs as a real process whose stderr is a pseudo-terminal (what a user's shell gives it),
against a DuckDB file and the fake OpenAI server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from protege.store import Store
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.evals import seed_completions, student_reply


@pytest.fixture
def setup(tmp_path: Path):
    db = tmp_path / "p.duckdb"
    s = Store(str(db))
    seed_completions(s)
    s.close()
    fake = start_fake_openai(student_reply(), delay=0.05)
    yield str(db), fake
    fake.stop()


def run_on_terminal(args: list[str], tty: bool = True) -> tuple[int, str, str]:
    """(exit code, stdout, stderr as the terminal saw it) of ``protege ARGS``."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-m", "protege", *args]
    if not tty:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out = proc.stdout.read().decode()
    proc.wait(60)
    os.close(master)
    return proc.returncode, out, seen.decode(errors="replace")


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
