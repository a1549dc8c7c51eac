"""Schema versions: a newer release opens an older store; an older release refuses a newer one
(on both backends: a DuckDB file, a PostgreSQL database)."""

from __future__ import annotations

import hashlib

import duckdb
import pytest

from protege.store import SCHEMA_VERSION, SchemaTooNewError, Store, get_stored, list_stored, migrate
from protege.store.migrations import current_version
from tests.fixtures.migrations import v1_capture
from tests.fixtures.raw_stores import migrate_raw, raw_connection

# The schema version the first release with a PostgreSQL store created (migration 8 came after).
FIRST_PG_VERSION = 7


# v1 files exist on DuckDB only (PostgreSQL stores began at FIRST_PG_VERSION, and v1's PostgreSQL
# layout has no meta_pairs to write): the PostgreSQL upgrade is test_v7_database_is_upgraded_with_rows_intact.
@pytest.mark.backends("duckdb")
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


@pytest.mark.backends("postgresql")
def test_v7_database_is_upgraded_with_rows_intact(make_db, tmp_path):
    """A PostgreSQL database as the first release with PostgreSQL left it (version 7, a capture
    numbered by the table's identity) opens at today's version with its rows, and capture
    numbers continue after the old ones."""
    db = make_db("old")
    with raw_connection(db) as conn:
        assert migrate_raw(conn, db, target=FIRST_PG_VERSION) == FIRST_PG_VERSION
        conn.execute(
            "INSERT INTO completions (id, created, started_at, request, response, metadata, outcome, model) "
            "VALUES ('chatcmpl-old', 1700000000, 1700000000.0, ?, ?, ?, 'ok', 'gpt-4o')",
            ['{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}',
             '{"id":"chatcmpl-old","object":"chat.completion","created":1700000000,"model":"gpt-4o","choices":[]}',
             '{"env":"prod"}'],
        )
        old_seq = conn.execute("SELECT seq FROM completions").fetchone()[0]
    store = Store(db, data_dir=tmp_path / "data")
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert get_stored(store, "chatcmpl-old")["model"] == "gpt-4o"
        assert [o["id"] for o in list_stored(store, metadata={"env": "prod"}).data] == ["chatcmpl-old"]
        assert store.next_seqs(1)[0] > old_seq  # capture order continues after the old rows
        versions = [r[0] for r in store.cursor().execute("SELECT version FROM protege_schema ORDER BY version").fetchall()]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
    finally:
        store.close()


def test_newer_file_is_refused_clearly(make_db, tmp_path):
    db = make_db("new")
    Store(db, data_dir=tmp_path / "data").close()
    with raw_connection(db) as conn:
        conn.execute("INSERT INTO protege_schema (version, name) VALUES (?, 'from the future')", [SCHEMA_VERSION + 1])
    with pytest.raises(SchemaTooNewError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this release"):
        Store(db, data_dir=tmp_path / "data")
    # the refused open released the store (DuckDB's file lock, PostgreSQL's migration lock):
    # another connection can have it, and migrate there
    with raw_connection(db) as conn:
        assert current_version(conn) == SCHEMA_VERSION + 1
        with pytest.raises(SchemaTooNewError):
            migrate_raw(conn, db)


def test_failed_migration_rolls_back(make_db, monkeypatch):
    from protege.store import migrations

    db = make_db("f")
    with raw_connection(db) as conn:
        migrate_raw(conn, db, target=1)

        def broken(c):
            c.execute("CREATE TABLE half_done (x INTEGER)")
            raise RuntimeError("boom")

        monkeypatch.setattr(migrations, "MIGRATIONS", [migrations.MIGRATIONS[0], (2, "broken", broken)])
        with pytest.raises(RuntimeError, match="boom"):
            migrate_raw(conn, db)
        assert current_version(conn) == 1
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'half_done'").fetchone()[0] == 0


class _Recorder:
    """Keeps the SQL a migration executes, in order, without running it."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, sql: str, *params):
        self.statements.append(sql)
        return self


def _executed(dialect: str) -> dict[int, str]:
    """sha256 (first 16 hex digits) of the statements each migration executes on ``dialect``."""
    from protege.store import migrations

    variants = migrations.PG_MIGRATIONS if dialect == "postgresql" else {}
    out = {}
    for number, _, fn in migrations.MIGRATIONS:
        recorder = _Recorder()
        variants.get(number, fn)(recorder)
        out[number] = hashlib.sha256("\n;\n".join(recorder.statements).encode()).hexdigest()[:16]
    return out


# Released migrations are frozen text. The PostgreSQL variants are derived from the DuckDB text by
# store/migrations._pg_variant; these are the hashes of the SQL the released variants executed
# (v1 and v3 statement for statement; their PostgreSQL-only indexes now run after the rest of the
# migration). A change to either dialect's SQL of a released version fails here.
_RELEASED_SQL = {
    "duckdb": {
        1: "75f19f6c92faf4df",
        2: "6c230b1b52305e9f",
        3: "9936782cec07f48c",
        4: "7e227aa7d69b0982",
        5: "84aca9466792de6b",
        6: "07ded7c3157e6cd8",
        7: "b82dc78bac0d5983",
    },
    "postgresql": {
        1: "f69c35e63895649d",
        2: "6c230b1b52305e9f",
        3: "b91fb2ee52322810",
        4: "7e227aa7d69b0982",
        5: "d1c17959050fbdcc",
        6: "7ff25fe5c210470e",
        7: "b82dc78bac0d5983",
    },
}


@pytest.mark.parametrize("dialect", ["duckdb", "postgresql"])
def test_released_migrations_execute_their_frozen_sql(dialect):
    executed = _executed(dialect)
    assert {n: executed[n] for n in _RELEASED_SQL[dialect]} == _RELEASED_SQL[dialect]


def test_a_postgresql_rewrite_that_stops_matching_is_an_error(tmp_path):
    from protege.store import migrations

    def duckdb_side(c):
        c.execute("CREATE TABLE t (x DOUBLE, y DOUBLE PRECISION)")

    conn = duckdb.connect(str(tmp_path / "r.duckdb"))
    migrations._pg_variant(duckdb_side)(conn)  # DOUBLE becomes DOUBLE PRECISION; DuckDB runs both
    assert conn.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 't'").fetchall() == [("DOUBLE",), ("DOUBLE",)]
    drifted = migrations._pg_variant(duckdb_side, rewrites=((r"\bz DOUBLE\b", "z REAL"),))
    with pytest.raises(RuntimeError, match=r"applied 0 times, not once"):
        drifted(duckdb.connect(str(tmp_path / "s.duckdb")))
