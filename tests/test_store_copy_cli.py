"""`protege store copy SRC DST` (store/copy_cli.py): the command as a user runs it, as
`protege.cli.main` (in this process: the code `python -m protege` runs, without a process start per
command) and, to be killed, a `python -m protege` subprocess, on real DuckDB files and a real
PostgreSQL server: counts per table
(text and --json), DuckDB -> PostgreSQL -> DuckDB and DuckDB -> DuckDB with every table equal, a copy
killed mid-way (SIGKILL) finished by a rerun, and the one-line refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import duckdb
import psycopg
import pytest
from protege.store import Store, insert_records
from protege.store.migrations import migrate

from tests import postgres
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.beside import ServeProcess, clean_env
from tests.fixtures.stores import seeded_store, store_record, store_snapshot

pytestmark = pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")


@pytest.fixture
def cli(in_process):
    """``cli(*args, cwd=...)``: `protege store copy ARGS` -> (exit status, stdout, stderr)."""
    return lambda *args, cwd: in_process("store", "copy", *args, cwd=cwd)


def copied(out: tuple[int, str, str]) -> dict:
    code, stdout, stderr = out
    assert code == 0, stderr
    return json.loads(stdout)


def test_copy_there_and_back_with_counts(postgres_server, tmp_path, cli):
    src = seeded_store(str(tmp_path / "src.duckdb"), tmp_path / "src-data")
    want = store_snapshot(src)
    src.close()
    url = postgres_server.database()

    first = copied(cli("src.duckdb", url, "--json", cwd=tmp_path))
    assert first["tables"]["completions"] == {"copied": 25, "skipped": 0}
    assert first["tables"]["feedback"] == {"copied": 1, "skipped": 0}
    assert first["tables"]["dataset_completions"] == {"copied": 2, "skipped": 0}
    assert first["tables"]["auto_routes"] == {"copied": 1, "skipped": 0}
    assert first["skipped"] == 0 and first["copied"] == sum(t["copied"] for t in first["tables"].values())
    assert first["schema_version"] >= 7

    code, out, err = cli("src.duckdb", url, cwd=tmp_path)  # text: one line per table with rows, then a summary
    assert code == 0 and err == "", err  # not a terminal: no progress bar, nothing on stderr
    lines = out.splitlines()
    assert lines[0].split() == ["completions", "0", "copied", "25", "already", "there"]
    assert lines[-1].startswith(f"copied 0 rows from src.duckdb to {url} in ") and lines[-1].endswith(" already there)")

    assert copied(cli(url, "back.duckdb", "--json", cwd=tmp_path))["tables"]["completions"]["copied"] == 25
    assert copied(cli("src.duckdb", "twin.duckdb", "--json", cwd=tmp_path))["tables"]["completions"]["copied"] == 25
    for name in ("back.duckdb", "twin.duckdb"):
        s = Store(str(tmp_path / name), read_only=True)
        assert store_snapshot(s) == want
        s.close()
    pg = Store(url)
    assert store_snapshot(pg) == want
    # the copy left fresh statistics behind (the filtered list's plan choice reads them)
    assert pg.cursor().execute("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'completions'").fetchone()[0]
    pg.close()


def test_a_killed_copy_is_finished_by_a_rerun(postgres_server, tmp_path, cli):
    # SIGKILL: nothing runs on the way out (the CLI installs no SIGTERM handler either, so SIGTERM
    # ends it the same way); whole batches are in, the one being written is not.
    n = 4000
    src = Store(str(tmp_path / "src.duckdb"))
    insert_records(src, [store_record(i) for i in range(n)])
    src.close()
    url = postgres_server.database()
    proc = subprocess.Popen([sys.executable, "-m", "protege", "store", "copy", "src.duckdb", url, "--batch-size", "40"],
                            cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while True:  # the schema exists once the copy has opened the destination
            try:
                if conn.execute("SELECT count(*) FROM completions").fetchone()[0] > 0:
                    break
            except psycopg.errors.UndefinedTable:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) != 0
        left = conn.execute("SELECT count(*) FROM completions").fetchone()[0]
    assert 0 < left < n  # killed mid-way: some batches in, not all
    res = copied(cli("src.duckdb", url, "--json", cwd=tmp_path))
    assert res["tables"]["completions"] == {"copied": n - left, "skipped": left}
    pg = Store(url)
    ids = [r[0] for r in pg.cursor().execute("SELECT id FROM completions ORDER BY seq").fetchall()]
    assert ids == [f"chatcmpl-{i}" for i in range(n)]  # each exactly once, in capture order
    pg.close()


def one_line_error(out: tuple[int, str, str]) -> str:
    code, stdout, stderr = out
    assert code != 0 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    return stderr


def test_refusals_are_one_line(postgres_server, tmp_path, cli):
    seeded_store(str(tmp_path / "src.duckdb"), tmp_path / "src-data").close()
    url = postgres_server.database()

    assert "same store" in one_line_error(cli("src.duckdb", f"{tmp_path}/./src.duckdb", cwd=tmp_path))
    assert "same store" in one_line_error(cli(url, url + "?connect_timeout=5", cwd=tmp_path))
    assert "no store at nowhere.duckdb" in one_line_error(cli("nowhere.duckdb", url, cwd=tmp_path))

    down = f"postgresql://protege:s3cret-pw@127.0.0.1:{_closed_port()}/protege"
    err = one_line_error(cli("src.duckdb", down, cwd=tmp_path))
    assert "s3cret-pw" not in err and "postgresql://protege:***@127.0.0.1" in err and "DST: cannot open" in err

    # A source written by an older release (schema 6): refused, neither migrated nor copied.
    old = duckdb.connect(str(tmp_path / "old.duckdb"))
    migrate(old, target=6)
    old.close()
    err = one_line_error(cli("old.duckdb", "new.duckdb", cwd=tmp_path))
    assert "schema versions differ" in err and "has version 6" in err
    check = duckdb.connect(str(tmp_path / "old.duckdb"), read_only=True)
    assert check.execute("SELECT max(version) FROM protege_schema").fetchone()[0] == 6
    check.close()


# A DuckDB file's single writer: a served PostgreSQL database is copied to and from like any other.
@pytest.mark.backends("duckdb")
def test_a_store_a_running_server_holds_is_refused(tmp_path, cli):
    upstream = start_fake_openai()
    (tmp_path / "srv").mkdir()
    srv = ServeProcess(tmp_path / "held.duckdb", tmp_path / "srv", upstream.base_url, clean_env())
    try:
        seeded_store(str(tmp_path / "src.duckdb"), tmp_path / "src-data").close()
        err = one_line_error(cli("src.duckdb", "held.duckdb", cwd=tmp_path))
        assert f"DST held.duckdb is held by a running server (PID {srv.proc.pid}" in err
        err = one_line_error(cli("held.duckdb", "other.duckdb", cwd=tmp_path))
        assert "SRC held.duckdb is held by a running server" in err and "protege store backup" in err
    finally:
        srv.stop()
        upstream.stop()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_destination_with_captures_of_its_own_needs_append(postgres_server, tmp_path, cli):
    seeded_store(str(tmp_path / "src.duckdb"), tmp_path / "src-data").close()
    url = postgres_server.database()
    dst = Store(url, data_dir=tmp_path / "dst-data")
    insert_records(dst, [store_record(100 + i) for i in range(5)])  # seqs 1..5, as the source's first
    dst.close()

    err = one_line_error(cli("src.duckdb", url, cwd=tmp_path))
    assert f"DST {url} already holds captures of its own (5 completions" in err and "--append" in err
    res = copied(cli("src.duckdb", url, "--append", "--json", cwd=tmp_path))
    assert res["tables"]["completions"] == {"copied": 25, "skipped": 0}
    pg = Store(url, data_dir=tmp_path / "dst-data")
    seqs = [r[0] for r in pg.cursor().execute("SELECT seq FROM completions ORDER BY seq").fetchall()]
    assert len(seqs) == len(set(seqs)) == 30
    insert_records(pg, [store_record(200)])  # a later capture gets a fresh number
    assert pg.cursor().execute("SELECT seq FROM completions WHERE id = 'chatcmpl-200'").fetchone()[0] > max(seqs)
    pg.close()
