"""The CLI beside a running `protege serve`: the same commands, the same output, through the server.

Real parts only: `protege serve` subprocesses on ephemeral ports (port 0: the record carries the
port the OS chose) on real DuckDB files, the fake OpenAI upstream, the openai SDK as the client,
and the CLI as `python -m protege` subprocesses. A command sent through the server is compared
with the same command run locally on a `protege store backup` of the served store (taken through
the server, which is itself under test: the copy has every capture).

All of that is about a DuckDB file's single writer (the record beside the file, forwarding, the
held file). On PostgreSQL the CLI beside a running server works on the database itself:
test_on_postgresql_the_cli_beside_a_server_opens_the_database.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from protege.store import served
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.beside import ServeProcess, clean_env

# A DuckDB file's single writer: the CLI forwards to the server that holds the file.
pytestmark = pytest.mark.backends("duckdb")

ADMIN = "ak-beside-server-test-1"

POLICIES = """\
[[policy]]
name = "topics"
match = { model = "gpt-4o-mini" }
trigger = { min_new_completions = 500, min_interval = "1h" }

[policy.student]
backend = "local"

[policy.gate]
metrics = ["label_accuracy"]
tolerance = 0.02
min_items = 100
"""

IMPORTED = {
    "id": "chatcmpl-imported-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "imported question"}],
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "imported answer"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "protege", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def upstream():
    fake = start_fake_openai()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, upstream):
    """A server with no keys (loopback): the CLI needs no key."""
    where = tmp_path_factory.mktemp("beside-open")
    (where / "server-cwd").mkdir()
    srv = ServeProcess(where / "store.duckdb", where / "server-cwd", upstream.base_url, clean_env())
    srv.ids = srv.capture()
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait(30)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, upstream):
    where = tmp_path_factory.mktemp("beside-keyed")
    (where / "server-cwd").mkdir()
    env = clean_env(PROTEGE_ADMIN_KEYS=json.dumps([ADMIN]), PROTEGE_PROXY_KEYS=json.dumps(["pk-client"]))
    srv = ServeProcess(where / "store.duckdb", where / "server-cwd", upstream.base_url, env)
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait(30)


def _post_cli(url: str, body: dict, key: str | None = None) -> tuple[int, dict | list]:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url + "/protege/v1/cli", data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_commands_through_the_server_match_local_runs(open_server, tmp_path, in_process):
    caller, local = tmp_path / "caller", tmp_path / "local"
    caller.mkdir()
    local.mkdir()
    db = str(open_server.db)
    # Writes through the server (the CLI as a process), relative paths taken from the caller's directory.
    (caller / "policies.toml").write_text(POLICIES)
    (caller / "new.jsonl").write_text(json.dumps(IMPORTED) + "\n")
    with ThreadPoolExecutor(2) as pool:
        applied, imported = pool.map(lambda a: cli(*a, "--db", db, cwd=caller),
                                     [("auto", "apply", "policies.toml"), ("completions", "import", "new.jsonl")])
    assert applied.returncode == 0, applied.stderr
    assert re.fullmatch(r"policy_\w+  topics\n", applied.stdout)
    assert (imported.returncode, imported.stdout) == (0, "imported 1 of 1 lines from new.jsonl\n"), imported.stderr
    backup = in_process("store", "backup", "backup.duckdb", "--db", db, cwd=caller)
    assert backup[0] == 0, backup
    assert backup[1].startswith("backed up the store to backup.duckdb: 4 captures, schema version ")
    assert (caller / "backup.duckdb").is_file() and not (open_server.db.parent / "server-cwd" / "backup.duckdb").exists()
    copy = str(caller / "backup.duckdb")

    reads = [
        ("completions", "stats"), ("completions", "stats", "--json"), ("completions", "list"),
        ("completions", "show", open_server.ids[1]), ("completions", "list", "--metadata", "task=topic", "--json"),
        ("auto", "status"), ("auto", "list"), ("completions", "export", "--out", "relative.jsonl"),
        ("completions", "show", "chatcmpl-missing"), ("dataset", "list"), ("eval", "list"),
    ]
    for args in reads:
        remote = in_process(*args, "--db", db, cwd=caller)
        here = in_process(*args, "--db", copy, cwd=local)
        assert remote == here, args
    assert "captures     4 (4 ok" in in_process("completions", "stats", "--db", db, cwd=caller)[1]
    assert in_process("completions", "show", "chatcmpl-missing", "--db", db, cwd=caller) == \
        (1, "", "error: no captured completion with id 'chatcmpl-missing'\n")
    # the export landed in the caller's directory, not the server's, with what a local export writes
    assert (caller / "relative.jsonl").read_text() == (local / "relative.jsonl").read_text()
    assert len((caller / "relative.jsonl").read_text().splitlines()) == 4

    # Writes on both sides give the same answers: import again (all skipped), then a dataset build.
    (local / "new.jsonl").write_text(json.dumps(IMPORTED) + "\n")
    again = [in_process("completions", "import", "new.jsonl", "--db", d, cwd=c) for d, c in ((db, caller), (copy, local))]
    assert again[0] == again[1] == (0, "imported 0 of 1 lines from new.jsonl, 1 already stored (skipped)\n", "")
    build = ("dataset", "build", "--name", "topics", "--label-source", "output")
    r, h = in_process(*build, "--db", db, cwd=caller), in_process(*build, "--db", copy, cwd=local)
    norm = lambda text, data: re.sub(r"ds_\w+", "ds_ID", text.replace(data, "DATA"))  # noqa: E731
    # the same exit and stderr both sides; 3 examples are below fine-tuning's minimum, which the build says
    assert (r[0], r[2]) == (h[0], h[2]) == (0, "warning: train: 3 examples; fine-tuning needs at least 10\n")
    assert norm(r[1], str(open_server.db.parent / "store-data")) == norm(h[1], str(caller / "backup-data"))
    assert "4 train / 0 validation" in r[1] or "train /" in r[1]

    # The real process, once: an export through the server lands in that process's directory.
    exported = cli("completions", "export", "--out", "again.jsonl", "--db", db, cwd=caller)
    assert (exported.returncode, exported.stdout) == (0, "exported 4 completions to again.jsonl\n"), exported.stderr
    assert (caller / "again.jsonl").read_text() == (caller / "relative.jsonl").read_text()


def test_a_command_error_comes_back_as_it_is(open_server, tmp_path):
    """A usage error inside a command, and the exit codes, come back as they are."""
    status, lines = _post_cli(open_server.url, {"argv": ["completions", "list", "--order", "sideways"], "cwd": str(tmp_path)})
    assert status == 200
    assert lines == [{"err": "error: --order must be asc or desc, not 'sideways'\n"}, {"exit": 1}]
    local = cli("completions", "list", "--order", "sideways", "--db", str(tmp_path / "none.duckdb"), cwd=tmp_path)
    assert local.stderr == lines[0]["err"] and local.returncode == 1


def test_help_is_formatted_at_the_callers_width(open_server, tmp_path, in_process, monkeypatch):
    status, lines = _post_cli(open_server.url, {"argv": ["dataset", "build", "--help"], "cwd": str(tmp_path), "columns": 60})
    assert status == 200 and lines[-1] == {"exit": 0}
    remote = "".join(line.get("out", "") for line in lines)
    monkeypatch.setenv("COLUMNS", "60")
    assert in_process("dataset", "build", "--help", cwd=tmp_path) == (0, remote, "")
    assert max(len(line) for line in remote.splitlines()) <= 60 and "--prune-system-prompt" in remote


def test_serve_and_worker_are_refused_remotely(open_server, tmp_path):
    for argv, word in ((["serve"], "serve"), (["worker", "--once"], "worker")):
        status, body = _post_cli(open_server.url, {"argv": argv, "cwd": str(tmp_path)})
        assert status == 400, body
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == "command_not_allowed_remotely" and word in body["error"]["message"]
    worker = cli("worker", "--once", "--db", str(open_server.db), cwd=tmp_path)
    assert worker.returncode == 1 and worker.stdout == ""
    assert worker.stderr.count("\n") == 1 and "protege serve --worker" in worker.stderr
    # A second `serve` on the held file: one line, no traceback.
    second = cli("serve", "--db", str(open_server.db), "--port", "0", cwd=tmp_path)
    assert second.returncode == 1
    assert second.stderr == f"error: {open_server.db} is already served by PID {open_server.proc.pid} at {open_server.url}; " \
                            "stop that server first, or pass another --db\n"


def test_bad_bodies_get_openai_errors(open_server, tmp_path):
    for body, param in (({"argv": "completions stats", "cwd": str(tmp_path)}, "argv"),
                        ({"argv": ["completions", "stats"], "cwd": "relative/dir"}, "cwd"),
                        ({"argv": [], "cwd": str(tmp_path), "columns": 5}, "columns")):
        status, answer = _post_cli(open_server.url, body)
        assert status == 400 and answer["error"]["param"] == param, answer


def test_a_keyed_server_needs_the_admin_key(keyed_server, tmp_path, in_process, monkeypatch):
    db = str(keyed_server.db)
    denied = cli("completions", "stats", "--db", db, cwd=tmp_path)
    assert denied.returncode == 1 and denied.stdout == ""
    assert denied.stderr.count("\n") == 1 and "401" in denied.stderr and "PROTEGE_ADMIN_KEY" in denied.stderr
    status, body = _post_cli(keyed_server.url, {"argv": ["completions", "stats"], "cwd": str(tmp_path)})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    monkeypatch.setenv("PROTEGE_ADMIN_KEY", "pk-client")  # a proxy key: 403
    code, out, err = in_process("completions", "stats", "--db", db, cwd=tmp_path)
    assert (code, out) == (1, "") and err.count("\n") == 1 and "403" in err
    monkeypatch.setenv("PROTEGE_ADMIN_KEY", ADMIN)
    allowed = in_process("completions", "stats", "--db", db, cwd=tmp_path)
    assert allowed[0] == 0 and allowed[2] == "", allowed
    assert allowed[1].startswith("captures     0 (0 ok")
    # the first configured admin key serves too (PROTEGE_ADMIN_KEYS, as in protege.toml)
    monkeypatch.delenv("PROTEGE_ADMIN_KEY")
    monkeypatch.setenv("PROTEGE_ADMIN_KEYS", json.dumps([ADMIN]))
    assert in_process("completions", "stats", "--db", db, cwd=tmp_path) == allowed


def test_sigterm_removes_the_record_and_the_cli_runs_locally(keyed_server, tmp_path):
    record_file = served.record_path(keyed_server.db)
    assert record_file.exists()
    assert keyed_server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert not record_file.exists()
    local = cli("completions", "stats", "--db", str(keyed_server.db), cwd=tmp_path)  # no key needed: local
    assert local.returncode == 0 and local.stdout.startswith("captures     0 (0 ok"), local.stderr


def test_sigkill_leaves_a_record_that_is_ignored(open_server, tmp_path):
    record_file = served.record_path(open_server.db)
    open_server.stop(signal.SIGKILL)
    assert record_file.exists() and served.read_record(open_server.db) is None
    local = cli("completions", "stats", "--db", str(open_server.db), cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert local.stdout.startswith("captures     4 (4 ok")


def test_read_commands_on_a_missing_store_say_so(tmp_path, in_process):
    out = cli("completions", "stats", "--db", "nothing.duckdb", cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == "error: no store at nothing.duckdb: start `protege serve` or pass --db\n"
    for args in (("auto", "status"), ("eval", "list"), ("dataset", "list"), ("store", "backup", "b.duckdb")):
        assert in_process(*args, "--db", "nothing.duckdb", cwd=tmp_path) == \
            (1, "", "error: no store at nothing.duckdb: start `protege serve` or pass --db\n"), args
    assert not (tmp_path / "nothing.duckdb").exists()


def test_a_server_that_does_not_answer_is_one_line(tmp_path, in_process):
    """A record whose process lives but does not listen (stuck, or a reused PID): say which server
    and what to do, in one line; nothing runs locally behind its back."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    db = tmp_path / "held.duckdb"
    served.write_record(db, f"http://127.0.0.1:{port}")  # this (live) process's PID
    try:
        code, out, err = in_process("completions", "stats", "--db", str(db), cwd=tmp_path)
    finally:
        served.remove_record(db)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith(f"error: cannot reach the server holding {db} at http://127.0.0.1:{port}")
    assert not db.exists()


def test_a_caller_that_goes_away_interrupts_its_command(open_server, tmp_path):
    """Ctrl-C (here: SIGKILL) on a long command run through the server interrupts it there, as
    Ctrl-C does locally: the next command does not wait behind an abandoned one (before, it
    waited for the whole eval run: 4 answers of 8 s each)."""
    slow = start_fake_openai(delay=8.0)
    try:
        caller = tmp_path / "gone"
        caller.mkdir()
        db = str(open_server.db)
        with open(caller / "eval.err", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "protege", "--db", db, "eval", "run", "--model", "gpt-4o-mini",
                                     "--candidate", f"name=slow,model=m,base_url={slow.base_url}", "--concurrency", "1",
                                     "--metric", "exact_match"], cwd=caller, env=clean_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while not slow.chat_requests:  # the command runs in the server and has asked the candidate
            assert proc.poll() is None and time.monotonic() < deadline, (caller / "eval.err").read_text()
            time.sleep(0.1)
        proc.kill()
        proc.wait(10)
        t0 = time.monotonic()
        stats = cli("completions", "stats", "--db", db, cwd=caller)
        took = time.monotonic() - t0
        assert stats.returncode == 0 and "captures" in stats.stdout, stats.stderr
        assert took < 16, (took, stats.stderr)  # at most the answer in flight (8 s) and a CLI start
        runs = cli("eval", "list", "--db", db, cwd=caller)
        assert "completed" not in runs.stdout.splitlines()[-1], runs.stdout
    finally:
        slow.stop()


@pytest.mark.backends("postgresql")
def test_on_postgresql_the_cli_beside_a_server_opens_the_database(make_db, tmp_path, upstream, in_process):
    """A keyed server on a PostgreSQL database: the CLI beside it needs no admin key (it sends
    nothing to the server, there is no record to find), reads what the server captured, and its
    writes (an import, a policy) are what the server serves at once; the worker runs beside it."""
    db = make_db("served")
    srv_cwd, caller = tmp_path / "srv", tmp_path / "caller"
    srv_cwd.mkdir()
    caller.mkdir()
    # keyed: proxy clients present a proxy key, the server its own upstream key (the fake's)
    env = clean_env(PROTEGE_ADMIN_KEYS=json.dumps([ADMIN]), PROTEGE_PROXY_KEYS=json.dumps(["pk-client"]),
                    OPENAI_API_KEY="sk-server")
    srv = ServeProcess(db, srv_cwd, upstream.base_url, env, data_dir=tmp_path / "srv-data")
    try:
        ids = srv.capture(key="pk-client", admin_key=ADMIN)
        assert served.record_path(db) is None
        data = ("--data-dir", str(tmp_path / "cli-data"))
        (caller / "policies.toml").write_text(POLICIES)
        (caller / "new.jsonl").write_text(json.dumps(IMPORTED) + "\n")
        # The CLI beside the server, without its admin key (in_process: the code `python -m protege` runs).
        imported = in_process("completions", "import", "new.jsonl", "--db", db, *data, cwd=caller)
        assert imported == (0, "imported 1 of 1 lines from new.jsonl\n", ""), imported
        applied = in_process("auto", "apply", "policies.toml", "--db", db, *data, cwd=caller)
        assert applied[0] == 0 and re.fullmatch(r"policy_\w+  topics\n", applied[1]), applied
        code, out, err = in_process("completions", "stats", "--db", db, *data, cwd=caller)
        assert (code, err) == (0, "") and "captures     4 (4 ok" in out
        code, out, err = in_process("completions", "show", ids[1], "--db", db, *data, cwd=caller)
        assert code == 0 and ids[1] in out, err
        listed = json.loads(in_process("completions", "list", "--metadata", "task=topic", "--json", "--db", db, *data, cwd=caller)[1])
        assert sorted(c["id"] for c in listed["data"]) == sorted(ids)
        assert "topics" in in_process("auto", "list", "--db", db, *data, cwd=caller)[1]
        # the server serves what the CLI wrote
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=ADMIN, max_retries=0)
        assert client.chat.completions.retrieve(IMPORTED["id"]).id == IMPORTED["id"]
        # and the worker, refused beside a DuckDB file's server, runs beside this one
        worker = in_process("worker", "--once", "--db", db, *data, cwd=caller)
        assert worker[0] == 0, worker
        assert srv.proc.poll() is None  # the server went on serving throughout
    finally:
        srv.stop()
