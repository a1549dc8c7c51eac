"""The record a running server leaves beside its database (store/served.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from protege.store import served


def test_a_live_record_is_found_and_only_its_writer_removes_it(tmp_path):
    db = tmp_path / "p.duckdb"
    assert served.read_record(db) is None
    path = served.write_record(db, "http://127.0.0.1:8123/")
    assert path == tmp_path / "p.duckdb.serve.json"
    assert served.server_url(db) == "http://127.0.0.1:8123"
    served.remove_record(db, pid=os.getpid() + 1)  # another process's removal leaves it
    assert served.server_url(db) is not None
    served.remove_record(db)
    assert not path.exists() and served.read_record(db) is None


def test_a_record_left_by_a_dead_server_is_ignored(tmp_path):
    db = tmp_path / "p.duckdb"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    served.write_record(db, "http://127.0.0.1:9", pid=int(dead.stdout))
    assert served.read_record(db) is None
    (tmp_path / "p.duckdb.serve.json").write_text("{not json")
    assert served.read_record(db) is None


def test_memory_and_url_stores_have_no_record():
    assert served.record_path(":memory:") is None
    assert served.record_path("postgresql://u@127.0.0.1/db") is None
