"""store/backup.py: a copy of a store that is open (and being written) is a whole store.

The backup is a DuckDB file copied through the DuckDB connection that holds it: DuckDB's alone. On
PostgreSQL it is refused in one line that names the way there (test_a_postgresql_store_is_not_backed_up_into_a_file)."""

from __future__ import annotations

import json

import pytest

from protege.store import Store, import_jsonl
from protege.store.backup import BackupError, backup_store


def _lines(n: int) -> str:
    return "".join(json.dumps({
        "id": f"chatcmpl-b{i}", "object": "chat.completion", "created": 1700000000 + i, "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"q{i}"}],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"a{i}"}, "finish_reason": "stop"}],
    }) + "\n" for i in range(n))


def _tables(store: Store) -> dict[str, int]:
    cur = store.cursor()
    names = [r[0] for r in cur.execute("SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database()").fetchall()]
    return {name: cur.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in sorted(names)}


@pytest.mark.backends("duckdb")  # a DuckDB file's backup (COPY FROM DATABASE into a new file)
def test_backup_of_an_open_store_has_every_table_and_row(tmp_path):
    src = tmp_path / "live.duckdb"
    (tmp_path / "c.jsonl").write_text(_lines(25))
    store = Store(str(src))
    try:
        assert import_jsonl(store, tmp_path / "c.jsonl").imported == 25
        # a copy of the file now, as `cp` would make it, misses what is still in the WAL
        done = backup_store(store, tmp_path / "copy.duckdb")
        expected = _tables(store)
        version = store.schema_version
    finally:
        store.close()
    assert done.completions == 25 and done.schema_version == version and done.path == str(tmp_path / "copy.duckdb")
    copy = Store(str(tmp_path / "copy.duckdb"))
    try:
        assert copy.schema_version == version
        assert _tables(copy) == expected and expected["completions"] == 25
    finally:
        copy.close()


@pytest.mark.backends("duckdb")  # a DuckDB file's backup
def test_backup_never_overwrites(tmp_path):
    store = Store(str(tmp_path / "s.duckdb"))
    try:
        (tmp_path / "taken.duckdb").write_bytes(b"keep me")
        with pytest.raises(BackupError, match="already exists"):
            backup_store(store, tmp_path / "taken.duckdb")
        assert (tmp_path / "taken.duckdb").read_bytes() == b"keep me"
        with pytest.raises(BackupError, match="the store itself"):
            backup_store(store, tmp_path / "s.duckdb")
        with pytest.raises(BackupError, match="does not exist"):
            backup_store(store, tmp_path / "no" / "dir.duckdb")
    finally:
        store.close()


@pytest.mark.backends("postgresql")
def test_a_postgresql_store_is_not_backed_up_into_a_file(make_db, tmp_path, in_process):
    db = make_db("pg")
    store = Store(db, data_dir=tmp_path / "data")
    try:
        with pytest.raises(BackupError, match=r"pg_dump.*protege store copy"):
            backup_store(store, tmp_path / "copy.duckdb")
    finally:
        store.close()
    code, out, err = in_process("store", "backup", "copy.duckdb", "--db", db, cwd=tmp_path)
    assert (code, out) == (1, "") and err.startswith("error: ") and err.count("\n") == 1, err
    assert "pg_dump" in err and f"protege store copy {db} copy.duckdb" in err
    assert not (tmp_path / "copy.duckdb").exists()
