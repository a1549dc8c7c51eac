"""`protege completions ...` through the real Typer app and the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import pytest
from typer.testing import CliRunner

from protege.cli import app
from protege.store import SCHEMA_VERSION, Store, insert_records, record_from_completion

runner = CliRunner()
DAY = 86_400
T0 = 1_735_689_600  # 2025-01-01T00:00:00Z
PROTEGE = str(Path(sys.executable).with_name("protege"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray protege.toml
    for key in [k for k in os.environ if k.startswith("PROTEGE_")]:
        monkeypatch.delenv(key)


def record(i: int, *, model: str = "gpt-4o-mini", created: int = T0, metadata: dict | None = None, **extra) -> dict:
    response = {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    request = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}
    rec = record_from_completion(response, request, metadata=metadata or {}, source="proxy", latency_ms=100.0 + i,
                                 ttft_ms=20.0 + i, upstream="https://api.openai.com/v1", key_hash="kh_abc123")
    rec.update(extra)
    return rec


@pytest.fixture
def db(make_db) -> str:
    path = make_db("cli")
    s = Store(path)
    insert_records(s, [
        record(0, created=T0, metadata={"env": "prod", "team": "a"}),
        record(1, created=T0 + 60, metadata={"env": "prod", "team": "b"}),
        record(2, created=T0 + DAY, model="gpt-4o", metadata={"env": "dev"}),
        record(3, created=T0 + DAY + 5, model="gpt-4o", outcome="upstream_error", status_code=500, response=None,
               error="upstream said 500", completion_tokens=None, prompt_tokens=None, total_tokens=None),
    ])
    s.close()
    return path


def run(db: str | Path, *args: str):
    return runner.invoke(app, ["--db", str(db), "completions", *args])


def test_list_table_and_json(db):
    r = run(db, "list")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "CREATED", "(UTC)"]
    assert [l.split()[0] for l in lines[1:]] == ["chatcmpl-3", "chatcmpl-2", "chatcmpl-1", "chatcmpl-0"]  # newest first
    assert "env=prod,team=a" in lines[-1] and "upstream_error" in lines[1]

    r = run(db, "list", "--json", "--order", "asc", "--limit", "2")
    body = json.loads(r.stdout)
    assert body["object"] == "list" and body["has_more"] is True
    assert [d["id"] for d in body["data"]] == ["chatcmpl-0", "chatcmpl-1"]
    assert body["first_id"] == "chatcmpl-0" and body["last_id"] == "chatcmpl-1"
    assert body["data"][0]["metadata"] == {"env": "prod", "team": "a"}


def test_list_filters(db):
    def listed(*args):
        r = run(db, "list", "--json", *args)
        assert r.exit_code == 0, r.output
        return [d["id"] for d in json.loads(r.stdout)["data"]]

    assert listed("--model", "gpt-4o") == ["chatcmpl-3", "chatcmpl-2"]
    assert listed("--metadata", "env=prod") == ["chatcmpl-1", "chatcmpl-0"]
    assert listed("--metadata", "env=prod", "--metadata", "team=b") == ["chatcmpl-1"]
    assert listed("--metadata", "env=x' OR 1=1 --") == []
    assert listed("--since", "2025-01-02") == ["chatcmpl-3", "chatcmpl-2"]
    assert listed("--until", "2025-01-02") == ["chatcmpl-1", "chatcmpl-0"]
    assert listed("--since", str(T0 + 60), "--until", "2025-01-02T00:00:00Z") == ["chatcmpl-1"]
    assert listed("--outcome", "ok", "--model", "gpt-4o") == ["chatcmpl-2"]


@pytest.mark.parametrize("args, message", [
    (["list", "--metadata", "novalue"], "--metadata: expected KEY=VALUE"),
    (["list", "--since", "yesterday"], "--since: expected an ISO date"),
    (["list", "--order", "sideways"], "--order must be asc or desc"),
    (["show", "chatcmpl-nope"], "no captured completion with id 'chatcmpl-nope'"),
    (["export", "--format", "csv", "--out", "x.csv"], "--format must be jsonl or parquet"),
    (["export", "--out", "no/such/dir/x.jsonl"], "does not exist"),
    (["import", "missing.jsonl"], "no such file: missing.jsonl"),
])
def test_bad_input_is_one_line_on_stderr(db, args, message):
    r = run(db, *args)
    assert r.exit_code != 0
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and message in r.stderr


def test_show_everything(db):
    r = run(db, "show", "chatcmpl-1")
    assert r.exit_code == 0, r.output
    for text in ("chatcmpl-1", "HTTP 200", "ttft 21.0 ms", "101.0 ms", "10 prompt + 5 completion = 15",
                 "https://api.openai.com/v1", "kh_abc123", '"team":"b"', "question 1", "answer 1"):
        assert text in r.stdout, text
    r = run(db, "show", "chatcmpl-3", "--json")
    rec = json.loads(r.stdout)
    assert rec["outcome"] == "upstream_error" and rec["status_code"] == 500 and rec["error"] == "upstream said 500"
    assert rec["request"]["messages"][0]["content"] == "question 3" and rec["response"] is None
    assert rec["metadata"] == {} and rec["key_hash"] == "kh_abc123" and rec["latency_ms"] == 103.0


def test_stats(db):
    r = run(db, "stats", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["total"], s["ok"], s["errors"], s["error_rate"]) == (4, 3, 1, 0.25)
    assert s["tokens"] == {"prompt": 30, "completion": 15, "total": 45}
    assert s["latency_ms"] == {"p50": 101.5, "p95": 102.9}
    assert s["ttft_ms"] == {"p50": 21.5}
    assert s["by_outcome"] == {"ok": 3, "upstream_error": 1}
    assert [(m["model"], m["count"], m["errors"]) for m in s["by_model"]] == [
        ("gpt-4o", 2, 1), ("gpt-4o-mini", 2, 0)]
    assert s["per_day"] == [{"day": "2025-01-01", "count": 2}, {"day": "2025-01-02", "count": 2}]
    r = run(db, "stats", "--metadata", "env=prod")
    assert r.exit_code == 0 and "captures     2 (2 ok, 0 errors" in r.stdout and "2025-01-01" in r.stdout


def test_export_import_roundtrip(db, tmp_path, make_db):
    out = tmp_path / "out.jsonl"
    r = run(db, "export", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"exported": 3, "format": "jsonl", "path": str(out)}
    lines = [orjson.loads(l) for l in out.read_bytes().splitlines()]
    assert [l["object"] for l in lines] == ["chat.completion"] * 3
    assert lines[0]["messages"] == [{"role": "user", "content": "question 0"}]

    other = make_db("other")
    r = runner.invoke(app, ["--db", str(other), "completions", "import", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"lines": 3, "imported": 3, "failed": 0, "errors": [],
                                    "skipped_duplicates": 0, "reided": 0, "reided_ids": []}
    r = runner.invoke(app, ["--db", str(other), "completions", "list", "--json", "--metadata", "team=b"])
    assert [d["id"] for d in json.loads(r.stdout)["data"]] == ["chatcmpl-1"]


def test_export_parquet(db, tmp_path):
    out = tmp_path / "all.parquet"
    r = run(db, "export", "--format", "parquet", "--out", str(out), "--model", "gpt-4o")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"exported 2 completions to {out}"
    rows = duckdb.connect().execute("SELECT id, outcome FROM read_parquet(?) ORDER BY seq", [str(out)]).fetchall()
    assert rows == [("chatcmpl-2", "ok"), ("chatcmpl-3", "upstream_error")]


def test_import_reports_line_numbers(tmp_path, make_db):
    f = tmp_path / "in.jsonl"
    f.write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n"
        + "garbage\n"
        + json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n"
    )
    imp = make_db("imp")
    r = run(imp, "import", str(f), "--model", "gpt-4o-mini")
    assert r.exit_code == 1
    assert "imported 1 of 3 lines" in r.stdout and "2 failed" in r.stdout
    assert r.stderr.splitlines()[0].startswith("error: line 2: invalid JSON")
    assert r.stderr.splitlines()[1] == "error: line 3: a fine-tuning line must end with an assistant message"
    r = run(imp, "import", str(f), "--json")
    body = json.loads(r.stdout)
    assert r.exit_code == 1 and body["imported"] == 1 and [e["line"] for e in body["errors"]] == [2, 3]


def test_newer_schema_is_one_line(db):
    store = Store(db)  # a newer release's migration, as it would have left the schema table
    store.cursor().execute("INSERT INTO protege_schema (version, name) VALUES (?, 'future')", [SCHEMA_VERSION + 1])
    store.close()
    r = run(db, "list")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this release" in r.stderr


# A file that is not a DuckDB database; PostgreSQL's counterpart (no server there) is the next test.
@pytest.mark.backends("duckdb")
def test_not_a_database_is_one_line(tmp_path, backend):
    bad = tmp_path / "notes.duckdb"
    bad.write_text("this is not a database\n" * 100)
    r = run(bad, "list")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"error: cannot open {bad}:") and "in use" not in r.stderr


@pytest.mark.backends("postgresql")
def test_no_database_server_is_one_line_without_the_password(backend):
    from tests.fixtures.http import free_port

    url = f"postgresql://protege:pw-SECRET-77@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    r = run(url, "list")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: cannot open postgresql://protege:***@127.0.0.1:") and "pw-SECRET-77" not in r.stderr


# -- through the installed console script, in other processes ----------------------------------


def _holder(db: str) -> subprocess.Popen:
    """Another process with the store open (as `protege serve` has it) until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from protege.store import Store; s = Store(sys.argv[1]); print('ready', flush=True); "
         "sys.stdin.readline()", db],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    return holder


# The single-writer lock is a DuckDB file's: a PostgreSQL database is shared (the next test).
@pytest.mark.backends("duckdb")
def test_held_file_gives_one_line_error(db):
    """While another process (as `protege serve` does) holds the file, the CLI says so in one line."""
    holder = _holder(db)
    try:
        assert holder.stdout.readline().strip() == "ready"
        # just the completions group in a second process (the full console script is run below)
        p = subprocess.run(
            [sys.executable, "-c", "from protege.store.cli import app; app(prog_name='protege completions')", "list"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PROTEGE_DB": str(db)},
        )
        assert p.returncode == 1
        assert p.stdout == ""
        lines = p.stderr.splitlines()
        assert len(lines) == 1, p.stderr
        assert lines[0].startswith("error: cannot open") and "in use by another process" in lines[0]
        assert f"(PID {holder.pid})" in lines[0]
    finally:
        holder.stdin.close()
        holder.wait(30)
    # once the holder is gone the installed console script opens it
    p = subprocess.run([PROTEGE, "--db", str(db), "completions", "list", "--json", "--limit", "1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["data"][0]["id"] == "chatcmpl-3"


@pytest.mark.backends("postgresql")
def test_a_database_another_process_has_open_is_used_beside_it(db):
    """On PostgreSQL, replicas share the database: the installed console script works while another
    process has the store open."""
    holder = _holder(db)
    try:
        assert holder.stdout.readline().strip() == "ready"
        p = subprocess.run([PROTEGE, "--db", db, "--data-dir", "cli-data", "completions", "list", "--json", "--limit", "1"],
                           capture_output=True, text=True, timeout=60)  # a data_dir of its own, as a replica has
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["data"][0]["id"] == "chatcmpl-3"
    finally:
        holder.stdin.close()
        holder.wait(30)
