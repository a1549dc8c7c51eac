"""README section 6 (automatic distillation) runs exactly as written.

The walkthrough's 428 requests go through the real proxy to a fake teacher (the chatterbot-corpus
topics, answered as ``{"label": "<topic>"}``); the server is stopped; then the section's
``policies.toml`` and its ``$ protege ...`` commands are taken from README.md (the blocks after the
``readme-test: auto-policies`` and ``readme-test: auto-run`` markers) and run in a shell, in the
directory of the default ``protege.duckdb``. Each command must succeed and print what the README
shows, ids, times and the student's version number aside.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import uvicorn

from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.auto import TEACHER, corpus, teacher_answer

README = Path(__file__).resolve().parent.parent / "README.md"
SYSTEM = ("You are the topic classifier of a help desk. Read the user's question and answer with JSON "
          'only, {"label": "<topic>"}, where topic is one of tech, trivia, coding or ai. ') * 4
_IDS = re.compile(r"\b(policy|cycle|ds|ftjob|route)_[0-9a-f]{12,}\b")
_TIMES = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
# The walkthrough trained protege/topics@v1 in section 4; run alone, this section trains v1.
_VERSIONS = re.compile(r"@v\d+\b")


def block_after(marker: str) -> str:
    """The fenced code block that follows ``<!-- readme-test: MARKER -->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- readme-test: " + re.escape(marker) + r" -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert m, f"README.md has no block after the readme-test marker {marker!r}"
    return m.group(1)


def commands_and_outputs(block: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines and the lines shown under each."""
    out: list[tuple[str, list[str]]] = []
    skipping = False
    for line in block.splitlines():
        if line.startswith("$ kill %"):
            skipping = True  # the README's walkthrough stops its server here; this test's harness already has
            continue
        if skipping and not line.startswith("$ "):
            continue
        skipping = False
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


def _masked(lines: list[str]) -> list[str]:
    return [_VERSIONS.sub("@vN", _TIMES.sub("TIME", _IDS.sub(lambda m: m.group(1) + "_ID", line.rstrip()))) for line in lines if line.strip()]


def capture_walkthrough_traffic(db: Path) -> None:
    """428 requests through `protege serve` (build_app under uvicorn) to the fake teacher, then stop it."""
    from protege.app import build_app
    from protege.settings import Settings

    labels = dict(corpus())
    teacher = start_fake_openai(lambda body: teacher_answer(labels.get(body["messages"][-1]["content"], "tech")))
    app, _store, _writer = build_app(Settings(db=str(db), upstream=teacher.base_url, flush_interval=0.01))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "proxy did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-readme-client", max_retries=0)
        for i, (question, _label) in enumerate(corpus()):
            client.chat.completions.create(
                model=TEACHER, metadata={"task": "topic", "user": f"u{i % 7}"},
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            )
    finally:
        server.should_exit = True  # "server stopped": the CLI below owns the file
        thread.join(30)
        teacher.stop()
    assert not thread.is_alive()


# DuckDB only, as the README is written: section 6 runs on the default protege.duckdb and shows no
# PostgreSQL command (the same policies and commands run on PostgreSQL in test_auto_cli/test_auto_worker).
def test_readme_section_6_runs_as_written(tmp_path) -> None:
    assert len(corpus()) == 428  # "the 428 captured requests of this walkthrough"
    capture_walkthrough_traffic(tmp_path / "protege.duckdb")
    (tmp_path / "policies.toml").write_text(block_after("auto-policies"), encoding="utf-8")
    steps = commands_and_outputs(block_after("auto-run"))
    assert [c.split()[1] for c, _ in steps][:3] == ["auto", "auto", "worker"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROTEGE_", "OPENAI_", "AZURE_OPENAI_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the `protege` of this install
    env["COLUMNS"] = "200"
    for command, shown in steps:
        p = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"$ {command}\n{p.stdout}{p.stderr}"
        assert _masked(p.stdout.splitlines()) == _masked(shown), f"$ {command}\n--- README shows:\n" + "\n".join(shown) + "\n--- it printed:\n" + p.stdout
