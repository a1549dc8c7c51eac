"""Numbered schema migrations, so that a newer release opens a file written by an older one.

Each migration runs once, in order, inside a transaction, and records its number in
``protege_schema``. Never edit a migration that has been released; add a new one.
"""

from __future__ import annotations

from typing import Callable

import duckdb
from sqlmodel import SQLModel


def create_tables(conn: duckdb.DuckDBPyConnection, *models: type[SQLModel]) -> None:
    """Create SQLModel tables (and their indexes) on this connection, inside the migration's
    transaction: the DDL is compiled by duckdb-engine's dialect and run here, because SQLAlchemy's
    ``create_all`` would commit the open transaction."""
    from duckdb_engine import Dialect
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = Dialect()
    for model in models:
        table = model.__table__  # type: ignore[attr-defined]
        conn.execute(str(CreateTable(table).compile(dialect=dialect)))
        for index in table.indexes:
            conn.execute(str(CreateIndex(index).compile(dialect=dialect)))


def _v1_completions(conn: duckdb.DuckDBPyConnection) -> None:
    # Captured completions: written in bulk (Arrow) by the capture writer, read by the Stored
    # Completions API. `seq` orders captures; `id` is the id the client saw (not unique across
    # upstreams that reuse ids, so it is indexed rather than constrained).
    conn.execute(
        """
        CREATE TABLE completions (
            seq BIGINT NOT NULL,
            id VARCHAR NOT NULL,
            created BIGINT NOT NULL,
            started_at DOUBLE NOT NULL,
            finished_at DOUBLE,
            model_requested VARCHAR,
            model VARCHAR,
            request VARCHAR NOT NULL,
            response VARCHAR,
            metadata VARCHAR NOT NULL DEFAULT '{}',
            store BOOLEAN,
            status_code INTEGER,
            outcome VARCHAR NOT NULL,
            error VARCHAR,
            latency_ms DOUBLE,
            ttft_ms DOUBLE,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            finish_reason VARCHAR,
            stream BOOLEAN NOT NULL DEFAULT false,
            upstream VARCHAR,
            key_hash VARCHAR,
            request_id VARCHAR,
            source VARCHAR NOT NULL DEFAULT 'proxy',
            served_by VARCHAR,
            paired_with VARCHAR,
            meta_pairs VARCHAR[]
        )
        """
    )
    conn.execute("CREATE INDEX completions_id ON completions(id)")
    # Metadata is kept twice, on purpose (see store/completions.py, "Metadata filters"):
    # `meta_pairs` (each pair as a JSON string '["key","value"]') makes a filtered, ordered page a
    # single-table scan that DuckDB's top-N cuts short with zone maps (~10 ms at 1M rows, where a
    # semi-join on the table below took 50-250 ms for common pairs); `completion_metadata` (one row
    # per pair) is the relational form for joins and analytics.
    conn.execute("CREATE TABLE completion_metadata (seq BIGINT NOT NULL, key VARCHAR NOT NULL, value VARCHAR NOT NULL)")


def _v2_evals(conn: duckdb.DuckDBPyConnection) -> None:
    from . import evals

    evals.migrate(conn)


def _v3_distill(conn: duckdb.DuckDBPyConnection) -> None:
    from . import datasets, feedback, jobs

    feedback.migrate(conn)
    datasets.migrate(conn)
    jobs.migrate(conn)


def _v4_auto(conn: duckdb.DuckDBPyConnection) -> None:
    from . import auto

    auto.migrate(conn)


def _v5_unique_ids(conn: duckdb.DuckDBPyConnection) -> None:
    # One capture, one id. Until now `id` was the upstream's id, which local servers repeat (Ollama
    # `chatcmpl-<0..998>`, "0", echoed request ids), so one id could name several captures. From
    # this version Protege mints the id the client sees; the upstream's is kept in `upstream_id`.
    # Existing duplicates: the newest capture of each id keeps it (the one retrieve, update and
    # feedback acted on until now), every older one gets a fresh id; what points at a capture by id
    # (feedback, dataset links, shadow pairs) is re-pointed by `seq`, which was always unique.
    # DuckDB cannot alter a table that has an index, so the id index is dropped and rebuilt.
    conn.execute("DROP INDEX completions_id")
    conn.execute("ALTER TABLE completions ADD COLUMN upstream_id VARCHAR")
    conn.execute("UPDATE completions SET upstream_id = id")
    conn.execute(
        """
        UPDATE completions SET id = 'chatcmpl-' || replace(uuid()::VARCHAR, '-', '')
        WHERE seq IN (
            SELECT seq FROM completions
            QUALIFY row_number() OVER (PARTITION BY upstream_id ORDER BY seq DESC) > 1
        )
        """
    )
    conn.execute(
        "UPDATE feedback SET completion_id = c.id FROM completions c "
        "WHERE c.seq = feedback.completion_seq AND c.id <> feedback.completion_id"
    )
    conn.execute(
        "UPDATE dataset_completions SET completion_id = c.id FROM completions c "
        "WHERE c.seq = dataset_completions.seq AND c.id <> dataset_completions.completion_id"
    )
    # A second answer (shadow/compare) is captured after the answer the client got: its pair is
    # the latest earlier non-shadow capture that had the id it names.
    conn.execute(
        """
        UPDATE completions AS s SET paired_with = coalesce(
            (SELECT arg_max(p.id, p.seq) FROM completions p
             WHERE p.upstream_id = s.paired_with AND p.seq < s.seq AND p.source <> 'shadow'),
            s.paired_with)
        WHERE s.paired_with IN (SELECT upstream_id FROM completions GROUP BY upstream_id HAVING count(*) > 1)
        """
    )
    conn.execute("CREATE INDEX completions_id ON completions(id)")


def _v6_students(conn: duckdb.DuckDBPyConnection) -> None:
    # Students served elsewhere (vLLM, Ollama, llama.cpp server, an Azure deployment): an
    # OpenAI-compatible base URL and model. Only the NAME of the environment variable holding the
    # key is kept, never the key itself.
    conn.execute(
        """
        CREATE TABLE endpoint_students (
            id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL UNIQUE,
            base_url VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            api_key_env VARCHAR,
            timeout DOUBLE NOT NULL DEFAULT 60.0,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )
        """
    )
    # Versions promoted by hand: the bare name protege/<name> may serve them although no gate passed
    # them (``forced``: the gate had rejected it and the user insisted).
    conn.execute(
        """
        CREATE TABLE student_promotions (
            id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            forced BOOLEAN NOT NULL DEFAULT false,
            reason VARCHAR,
            created_at DOUBLE NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX student_promotions_name ON student_promotions(name)")


MIGRATIONS: list[tuple[int, str, Callable[[duckdb.DuckDBPyConnection], None]]] = [
    (1, "completions", _v1_completions),
    (2, "evals", _v2_evals),
    (3, "distill", _v3_distill),
    (4, "auto", _v4_auto),
    (5, "unique_ids", _v5_unique_ids),
    (6, "students", _v6_students),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaTooNewError(RuntimeError):
    """The file was written by a newer Protege; opening it could corrupt it, so we refuse."""


def current_version(conn: duckdb.DuckDBPyConnection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS protege_schema (version INTEGER NOT NULL, name VARCHAR, applied_at TIMESTAMP DEFAULT now())")
    row = conn.execute("SELECT max(version) FROM protege_schema").fetchone()
    return int(row[0] or 0)


def migrate(conn: duckdb.DuckDBPyConnection, target: int | None = None) -> int:
    """Apply pending migrations up to ``target`` (default: all). Returns the resulting version."""
    version = current_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"this database has schema version {version}, newer than this release understands ({SCHEMA_VERSION}); upgrade protege"
        )
    for number, name, fn in MIGRATIONS:
        if number <= version or (target is not None and number > target):
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            fn(conn)
            conn.execute("INSERT INTO protege_schema (version, name) VALUES (?, ?)", [number, name])
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        version = number
    return version
