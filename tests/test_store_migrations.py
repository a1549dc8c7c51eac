"""Schema versions: a newer release opens an older file; an older release refuses a newer one."""

from __future__ import annotations

import duckdb
import pytest

from protege.store import SCHEMA_VERSION, SchemaTooNewError, Store, get_stored, list_stored, migrate
from protege.store.migrations import current_version
from tests.fixtures.migrations import v1_capture


def test_v1_file_is_upgraded_with_rows_intact(tmp_path):
    path = str(tmp_path / "old.duckdb")
    conn = duckdb.connect(path)
    assert migrate(conn, target=1) == 1
    v1_capture(conn, 7, "chatcmpl-old", "env", "prod")
    tables_v1 = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    conn.close()

    store = Store(path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        tables = {r[0] for r in store.cursor().execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert tables > tables_v1 - {"completion_metadata"}  # later migrations added their tables
        assert "completion_metadata" not in tables  # retired by migration 7
        assert get_stored(store, "chatcmpl-old")["model"] == "gpt-4o"
        assert [o["id"] for o in list_stored(store, metadata={"env": "prod"}).data] == ["chatcmpl-old"]
        assert store.next_seqs(1) == [8]  # capture order continues after the old rows
    finally:
        store.close()
    # opening again is a no-op
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    versions = [r[0] for r in store.cursor().execute("SELECT version FROM protege_schema ORDER BY version").fetchall()]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    store.close()


def test_newer_file_is_refused_clearly(tmp_path):
    path = str(tmp_path / "new.duckdb")
    Store(path).close()
    conn = duckdb.connect(path)
    conn.execute("INSERT INTO protege_schema (version, name) VALUES (?, 'from the future')", [SCHEMA_VERSION + 1])
    conn.close()
    with pytest.raises(SchemaTooNewError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this release"):
        Store(path)
    # the refused open released the file: another connection can have it
    conn = duckdb.connect(path)
    assert current_version(conn) == SCHEMA_VERSION + 1
    conn.close()


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    from protege.store import migrations

    path = str(tmp_path / "f.duckdb")
    conn = duckdb.connect(path)
    migrate(conn, target=1)

    def broken(c):
        c.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [migrations.MIGRATIONS[0], (2, "broken", broken)])
    with pytest.raises(RuntimeError, match="boom"):
        migrations.migrate(conn)
    assert current_version(conn) == 1
    assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'half_done'").fetchone()[0] == 0
    conn.close()
