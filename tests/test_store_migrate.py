"""Migrations upgrade a store created by the first schema to exactly today's schema.

After simonw/llm's tests/test_migrate.py: a file is created at schema v1 (migrations up to 1
only), a row is written as a v1 release wrote it, the file is upgraded by opening it, and every
table's columns (name, type, nullability, default), indexes and keys are compared with the
snapshot below. A fresh store must come out identical. The snapshot is literal on purpose: when a
model changes, this test fails until a NEW migration makes the schema match (released migrations
are never edited, see store/migrations.py).

The snapshot is DuckDB's (its catalog functions, old DuckDB files): those tests are DuckDB's alone.
On PostgreSQL, a database left at any earlier version must reach exactly a fresh database's
schema (test_postgresql_database_at_each_version_upgrades_to_a_fresh_schema).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from protege.store import SCHEMA_VERSION, Store, get_stored, list_stored, migrate
from tests.fixtures.migrations import v1_capture
from tests.fixtures.raw_stores import migrate_raw, raw_connection

SCHEMA: dict[str, list[tuple[str, str, bool, str | None]]] = {
    'auto_cycles': [
        ('id', 'VARCHAR', False, None),
        ('policy_id', 'VARCHAR', False, None),
        ('state', 'VARCHAR', False, None),
        ('created_at', 'DOUBLE', False, None),
        ('updated_at', 'DOUBLE', False, None),
        ('until_seq', 'INTEGER', False, None),
        ('dataset_id', 'VARCHAR', True, None),
        ('job_id', 'VARCHAR', True, None),
        ('student_model', 'VARCHAR', True, None),
        ('evaluation', 'VARCHAR', True, None),
        ('decision_id', 'VARCHAR', True, None),
        ('error', 'VARCHAR', True, None),
        ('attempts', 'INTEGER', False, None),
    ],
    'auto_decisions': [
        ('id', 'VARCHAR', False, None),
        ('policy_id', 'VARCHAR', False, None),
        ('cycle_id', 'VARCHAR', True, None),
        ('route_id', 'VARCHAR', True, None),
        ('kind', 'VARCHAR', False, None),
        ('outcome', 'VARCHAR', False, None),
        ('reason', 'VARCHAR', False, None),
        ('details', 'VARCHAR', False, None),
        ('created_at', 'DOUBLE', False, None),
    ],
    'auto_meta': [
        ('key', 'VARCHAR', False, None),
        ('value', 'BIGINT', False, None),
    ],
    'auto_policies': [
        ('id', 'VARCHAR', False, None),
        ('name', 'VARCHAR', False, None),
        ('spec', 'VARCHAR', False, None),
        ('enabled', 'BOOLEAN', False, None),
        ('created_at', 'INTEGER', False, None),
        ('updated_at', 'INTEGER', False, None),
    ],
    'auto_routes': [
        ('id', 'VARCHAR', False, None),
        ('policy_id', 'VARCHAR', False, None),
        ('cycle_id', 'VARCHAR', True, None),
        ('student_model', 'VARCHAR', False, None),
        ('match_model', 'VARCHAR', True, None),
        ('match_metadata', 'VARCHAR', False, None),
        ('stage', 'VARCHAR', False, None),
        ('percent', 'DOUBLE', False, None),
        ('compare_percent', 'DOUBLE', False, None),
        ('timeout', 'DOUBLE', False, None),
        ('active', 'BOOLEAN', False, None),
        ('stage_started_at', 'DOUBLE', False, None),
        ('stage_started_seq', 'INTEGER', False, None),
        ('created_at', 'DOUBLE', False, None),
        ('updated_at', 'DOUBLE', False, None),
        ('ended_at', 'DOUBLE', True, None),
    ],
    'completions': [
        ('seq', 'BIGINT', False, None),
        ('id', 'VARCHAR', False, None),
        ('created', 'BIGINT', False, None),
        ('started_at', 'DOUBLE', False, None),
        ('finished_at', 'DOUBLE', True, None),
        ('model_requested', 'VARCHAR', True, None),
        ('model', 'VARCHAR', True, None),
        ('request', 'VARCHAR', False, None),
        ('response', 'VARCHAR', True, None),
        ('metadata', 'VARCHAR', False, "'{}'"),
        ('store', 'BOOLEAN', True, None),
        ('status_code', 'INTEGER', True, None),
        ('outcome', 'VARCHAR', False, None),
        ('error', 'VARCHAR', True, None),
        ('latency_ms', 'DOUBLE', True, None),
        ('ttft_ms', 'DOUBLE', True, None),
        ('prompt_tokens', 'INTEGER', True, None),
        ('completion_tokens', 'INTEGER', True, None),
        ('total_tokens', 'INTEGER', True, None),
        ('finish_reason', 'VARCHAR', True, None),
        ('stream', 'BOOLEAN', False, 'false'),
        ('upstream', 'VARCHAR', True, None),
        ('key_hash', 'VARCHAR', True, None),
        ('request_id', 'VARCHAR', True, None),
        ('source', 'VARCHAR', False, "'proxy'"),
        ('served_by', 'VARCHAR', True, None),
        ('paired_with', 'VARCHAR', True, None),
        ('meta_pairs', 'VARCHAR[]', True, None),
        ('upstream_id', 'VARCHAR', True, None),
    ],
    'dataset_completions': [
        ('dataset_id', 'VARCHAR', False, None),
        ('seq', 'BIGINT', False, None),
        ('completion_id', 'VARCHAR', False, None),
        ('split', 'VARCHAR', False, None),
    ],
    'datasets': [
        ('id', 'VARCHAR', False, None),
        ('name', 'VARCHAR', False, None),
        ('version', 'INTEGER', False, None),
        ('kind', 'VARCHAR', False, "'sft'"),
        ('created_at', 'BIGINT', False, None),
        ('options', 'VARCHAR', False, "'{}'"),
        ('counts', 'VARCHAR', False, "'{}'"),
        ('stats', 'VARCHAR', False, "'{}'"),
        ('files', 'VARCHAR', False, "'{}'"),
        ('system_prompt', 'VARCHAR', True, None),
        ('system_prompt_sha256', 'VARCHAR', True, None),
    ],
    'endpoint_students': [
        ('id', 'VARCHAR', False, None),
        ('name', 'VARCHAR', False, None),
        ('base_url', 'VARCHAR', False, None),
        ('model', 'VARCHAR', False, None),
        ('api_key_env', 'VARCHAR', True, None),
        ('timeout', 'DOUBLE', False, '60.0'),
        ('created_at', 'BIGINT', False, None),
        ('updated_at', 'BIGINT', False, None),
    ],
    'eval_items': [
        ('id', 'VARCHAR', False, None),
        ('run_id', 'VARCHAR', False, None),
        ('idx', 'INTEGER', False, None),
        ('source_id', 'VARCHAR', True, None),
        ('messages', 'VARCHAR', False, None),
        ('params', 'VARCHAR', False, None),
        ('reference', 'VARCHAR', True, None),
        ('reference_kind', 'VARCHAR', False, None),
        ('teacher_output', 'VARCHAR', True, None),
        ('teacher_model', 'VARCHAR', True, None),
        ('teacher_prompt_tokens', 'INTEGER', True, None),
        ('teacher_completion_tokens', 'INTEGER', True, None),
        ('teacher_latency_ms', 'FLOAT', True, None),
        ('metadata', 'VARCHAR', False, None),
    ],
    'eval_outputs': [
        ('id', 'VARCHAR', False, None),
        ('run_id', 'VARCHAR', False, None),
        ('item_id', 'VARCHAR', False, None),
        ('candidate', 'VARCHAR', False, None),
        ('status', 'VARCHAR', False, None),
        ('output', 'VARCHAR', True, None),
        ('model', 'VARCHAR', True, None),
        ('latency_ms', 'FLOAT', True, None),
        ('prompt_tokens', 'INTEGER', True, None),
        ('completion_tokens', 'INTEGER', True, None),
        ('attempts', 'INTEGER', False, None),
        ('error', 'VARCHAR', True, None),
        ('created_at', 'INTEGER', False, None),
    ],
    'eval_runs': [
        ('id', 'VARCHAR', False, None),
        ('created_at', 'INTEGER', False, None),
        ('name', 'VARCHAR', True, None),
        ('status', 'VARCHAR', False, None),
        ('spec', 'VARCHAR', False, None),
        ('n_items', 'INTEGER', False, None),
        ('n_candidates', 'INTEGER', False, None),
        ('started_at', 'INTEGER', True, None),
        ('completed_at', 'INTEGER', True, None),
        ('error', 'VARCHAR', True, None),
        ('results', 'VARCHAR', True, None),
    ],
    'eval_scores': [
        ('id', 'VARCHAR', False, None),
        ('run_id', 'VARCHAR', False, None),
        ('item_id', 'VARCHAR', False, None),
        ('candidate', 'VARCHAR', False, None),
        ('metric', 'VARCHAR', False, None),
        ('score', 'FLOAT', True, None),
    ],
    'feedback': [
        ('id', 'VARCHAR', False, None),
        ('completion_id', 'VARCHAR', False, None),
        ('completion_seq', 'BIGINT', True, None),
        ('created_at', 'BIGINT', False, None),
        ('score', 'DOUBLE', True, None),
        ('label', 'VARCHAR', True, None),
        ('correction', 'VARCHAR', True, None),
        ('comment', 'VARCHAR', True, None),
        ('accepted', 'BOOLEAN', True, None),
        ('source', 'VARCHAR', False, "'api'"),
        ('metadata', 'VARCHAR', False, "'{}'"),
    ],
    'finetune_job_events': [
        ('id', 'VARCHAR', False, None),
        ('job_id', 'VARCHAR', False, None),
        ('seq', 'INTEGER', False, None),
        ('created_at', 'BIGINT', False, None),
        ('level', 'VARCHAR', False, None),
        ('type', 'VARCHAR', False, None),
        ('message', 'VARCHAR', False, None),
        ('data', 'VARCHAR', True, None),
    ],
    'finetune_job_status': [
        ('id', 'VARCHAR', False, None),
        ('job_id', 'VARCHAR', False, None),
        ('status', 'VARCHAR', False, None),
        ('changed_at', 'DOUBLE', False, None),
        ('message', 'VARCHAR', True, None),
    ],
    'finetune_jobs': [
        ('id', 'VARCHAR', False, None),
        ('created_at', 'BIGINT', False, None),
        ('updated_at', 'DOUBLE', False, None),
        ('finished_at', 'INTEGER', True, None),
        ('backend', 'VARCHAR', False, None),
        ('status', 'VARCHAR', False, None),
        ('model', 'VARCHAR', False, None),
        ('method', 'VARCHAR', False, None),
        ('dataset_id', 'VARCHAR', True, None),
        ('training_file', 'VARCHAR', True, None),
        ('validation_file', 'VARCHAR', True, None),
        ('hyperparameters', 'VARCHAR', False, None),
        ('suffix', 'VARCHAR', True, None),
        ('seed', 'INTEGER', True, None),
        ('job_metadata', 'VARCHAR', False, None),
        ('name', 'VARCHAR', True, None),
        ('provider_job_id', 'VARCHAR', True, None),
        ('provider_files', 'VARCHAR', False, None),
        ('fine_tuned_model', 'VARCHAR', True, None),
        ('result', 'VARCHAR', False, None),
        ('error', 'VARCHAR', True, None),
    ],
    'local_students': [
        ('id', 'VARCHAR', False, None),
        ('name', 'VARCHAR', False, None),
        ('version', 'INTEGER', False, None),
        ('created_at', 'BIGINT', False, None),
        ('path', 'VARCHAR', False, None),
        ('sha256', 'VARCHAR', False, None),
        ('manifest_path', 'VARCHAR', False, None),
        ('manifest', 'VARCHAR', False, None),
        ('job_id', 'VARCHAR', True, None),
    ],
    'protege_schema': [
        ('version', 'INTEGER', False, None),
        ('name', 'VARCHAR', True, None),
        ('applied_at', 'TIMESTAMP', True, 'now()'),
    ],
    'student_promotions': [
        ('id', 'VARCHAR', False, None),
        ('name', 'VARCHAR', False, None),
        ('version', 'INTEGER', False, None),
        ('forced', 'BOOLEAN', False, 'false'),
        ('reason', 'VARCHAR', True, None),
        ('created_at', 'DOUBLE', False, None),
    ],
}
INDEXES: set[tuple[str, str, str, bool]] = {
    ('auto_cycles', 'ix_auto_cycles_policy_id', '[policy_id]', False),
    ('auto_decisions', 'ix_auto_decisions_policy_id', '[policy_id]', False),
    ('auto_policies', 'ix_auto_policies_name', '[\'"name"\']', False),
    ('auto_routes', 'ix_auto_routes_policy_id', '[policy_id]', False),
    ('completions', 'completions_id', '[id]', False),
    ('datasets', 'datasets_name', '[\'"name"\']', False),
    ('eval_items', 'ix_eval_items_run_id', '[run_id]', False),
    ('eval_outputs', 'ix_eval_outputs_run_id', '[run_id]', False),
    ('eval_scores', 'ix_eval_scores_run_id', '[run_id]', False),
    ('feedback', 'feedback_completion_id', '[completion_id]', False),
    ('finetune_job_events', 'ix_finetune_job_events_job_id', '[job_id]', False),
    ('finetune_job_status', 'ix_finetune_job_status_job_id', '[job_id]', False),
    ('local_students', 'ix_local_students_name', '[\'"name"\']', False),
    ('student_promotions', 'student_promotions_name', '[\'"name"\']', False),
}
KEYS: set[tuple[str, str, tuple[str, ...]]] = {
    ('auto_cycles', 'PRIMARY KEY', ('id',)),
    ('auto_decisions', 'PRIMARY KEY', ('id',)),
    ('auto_meta', 'PRIMARY KEY', ('key',)),
    ('auto_policies', 'PRIMARY KEY', ('id',)),
    ('auto_routes', 'PRIMARY KEY', ('id',)),
    ('datasets', 'PRIMARY KEY', ('id',)),
    ('endpoint_students', 'PRIMARY KEY', ('id',)),
    ('endpoint_students', 'UNIQUE', ('name',)),
    ('eval_items', 'PRIMARY KEY', ('id',)),
    ('eval_outputs', 'PRIMARY KEY', ('id',)),
    ('eval_runs', 'PRIMARY KEY', ('id',)),
    ('eval_scores', 'PRIMARY KEY', ('id',)),
    ('feedback', 'PRIMARY KEY', ('id',)),
    ('finetune_job_events', 'PRIMARY KEY', ('id',)),
    ('finetune_job_status', 'PRIMARY KEY', ('id',)),
    ('finetune_jobs', 'PRIMARY KEY', ('id',)),
    ('local_students', 'PRIMARY KEY', ('id',)),
    ('student_promotions', 'PRIMARY KEY', ('id',)),
}


def schema_of(conn: Any) -> dict[str, Any]:
    """Columns per table, indexes and keys, as the snapshot spells them."""
    tables = [r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1").fetchall()]
    columns = {
        t: [(r[0], r[1], r[2] == "YES", r[3]) for r in conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position", [t]).fetchall()]
        for t in tables
    }
    indexes = {(r[0], r[1], str(r[2]), r[3]) for r in conn.execute(
        "SELECT table_name, index_name, expressions, is_unique FROM duckdb_indexes()").fetchall()}
    keys = {(r[0], r[1], tuple(r[2])) for r in conn.execute(
        "SELECT table_name, constraint_type, constraint_column_names FROM duckdb_constraints() "
        "WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE')").fetchall()}
    return {"columns": columns, "indexes": indexes, "keys": keys}


# Old DuckDB files, compared through DuckDB's own catalog (duckdb_indexes, duckdb_constraints).
@pytest.mark.backends("duckdb")
def test_v1_store_upgrades_to_the_snapshot(tmp_path: Path) -> None:
    path = str(tmp_path / "v1.duckdb")
    conn = duckdb.connect(path)
    assert migrate(conn, target=1) == 1
    v1_capture(conn, 3, "chatcmpl-v1", "task", "t")  # meta_pairs and the side table both
    conn.close()

    store = Store(path)  # opening upgrades
    try:
        assert store.schema_version == SCHEMA_VERSION == 8
        got = schema_of(store.cursor())
        assert got["columns"] == SCHEMA
        assert got["indexes"] == INDEXES
        assert got["keys"] == KEYS
        # the row came through, with its id kept as upstream_id (v5) and its metadata still filterable
        row = store.cursor().execute("SELECT id, upstream_id, meta_pairs FROM completions").fetchall()
        assert row == [("chatcmpl-v1", "chatcmpl-v1", ['["task","t"]'])]
        assert get_stored(store, "chatcmpl-v1")["metadata"] == {"task": "t"}
        assert [o["id"] for o in list_stored(store, metadata={"task": "t"}).data] == ["chatcmpl-v1"]
        assert store.cursor().execute("SELECT * FROM auto_meta").fetchall() == [("routes_version", 0)]
    finally:
        store.close()


@pytest.mark.backends("duckdb")  # DuckDB files and catalog: see the PostgreSQL test at the end
def test_fresh_store_equals_upgraded_store(tmp_path: Path) -> None:
    old = str(tmp_path / "old.duckdb")
    conn = duckdb.connect(old)
    migrate(conn, target=1)
    conn.close()
    upgraded = Store(old)
    fresh = Store(str(tmp_path / "fresh.duckdb"))
    try:
        assert schema_of(fresh.cursor()) == schema_of(upgraded.cursor())
        assert schema_of(fresh.cursor())["columns"] == SCHEMA
    finally:
        upgraded.close()
        fresh.close()


@pytest.mark.backends("duckdb")  # DuckDB files and catalog: see the PostgreSQL test below
def test_each_intermediate_version_upgrades_to_the_same_schema(tmp_path: Path) -> None:
    """A file left at any released version (not only v1) reaches the same schema."""
    for version in range(1, SCHEMA_VERSION):
        path = str(tmp_path / f"v{version}.duckdb")
        conn = duckdb.connect(path)
        assert migrate(conn, target=version) == version
        conn.close()
        store = Store(path)
        try:
            assert store.schema_version == SCHEMA_VERSION
            assert schema_of(store.cursor())["columns"] == SCHEMA, f"from v{version}"
        finally:
            store.close()


def pg_schema_of(cur: Any) -> dict[str, Any]:
    """Columns per table (name, type, nullability, default), index definitions and keys of a
    PostgreSQL store, from its catalog."""
    tables = [r[0] for r in cur.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1").fetchall()]
    columns = {
        t: cur.execute(
            "SELECT column_name, data_type, is_nullable, column_default, is_identity FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = ? ORDER BY ordinal_position", [t]).fetchall()
        for t in tables
    }
    indexes = set(cur.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'").fetchall())
    keys = set(cur.execute(
        "SELECT conrelid::regclass::text, contype, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace").fetchall())
    return {"columns": columns, "indexes": indexes, "keys": keys}


@pytest.mark.backends("postgresql")
def test_postgresql_database_at_each_version_upgrades_to_a_fresh_schema(make_db, tmp_path: Path) -> None:
    fresh = Store(make_db("fresh"), data_dir=tmp_path / "fresh-data")
    want = pg_schema_of(fresh.cursor())
    fresh.close()
    assert set(want["columns"]) == set(SCHEMA)  # the same tables as the DuckDB snapshot
    assert [c[0] for c in want["columns"]["completions"]] == [c[0] for c in SCHEMA["completions"] if c[0] != "meta_pairs"]
    # v7: what the first release with PostgreSQL created; v1: every migration's upgrade path (the
    # DuckDB test above walks every version; on PostgreSQL each is a database of its own, ~1 s)
    for version in (1, 7):
        db = make_db(f"v{version}")
        with raw_connection(db) as conn:
            assert migrate_raw(conn, db, target=version) == version
        store = Store(db, data_dir=tmp_path / f"v{version}-data")
        try:
            assert store.schema_version == SCHEMA_VERSION
            assert pg_schema_of(store.cursor()) == want, f"from v{version}"
        finally:
            store.close()
