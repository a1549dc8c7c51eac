"""Numbered schema migrations, so that a newer release opens a file written by an older one.

Each migration runs once, in order, inside a transaction, and records its number in
``protege_schema``. Never edit a migration that has been released; add a new one.
"""

from __future__ import annotations

from typing import Callable

import duckdb
from duckdb_engine import ConnectionWrapper
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel


def create_tables(conn: duckdb.DuckDBPyConnection, *models: type[SQLModel]) -> None:
    """Create SQLModel tables on this connection (for migrations of ORM-managed tables)."""
    engine = create_engine("duckdb://", creator=lambda: ConnectionWrapper(conn), poolclass=StaticPool)
    SQLModel.metadata.create_all(engine, tables=[m.__table__ for m in models])  # type: ignore[attr-defined]


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
            paired_with VARCHAR
        )
        """
    )
    conn.execute("CREATE INDEX completions_id ON completions(id)")
    # One row per metadata pair: filters are a semi-join on short columns, fast at millions of rows.
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


MIGRATIONS: list[tuple[int, str, Callable[[duckdb.DuckDBPyConnection], None]]] = [
    (1, "completions", _v1_completions),
    (2, "evals", _v2_evals),
    (3, "distill", _v3_distill),
    (4, "auto", _v4_auto),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def current_version(conn: duckdb.DuckDBPyConnection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS protege_schema (version INTEGER NOT NULL, name VARCHAR, applied_at TIMESTAMP DEFAULT now())")
    row = conn.execute("SELECT max(version) FROM protege_schema").fetchone()
    return int(row[0] or 0)


def migrate(conn: duckdb.DuckDBPyConnection, target: int | None = None) -> int:
    """Apply pending migrations up to ``target`` (default: all). Returns the resulting version."""
    version = current_version(conn)
    if version > SCHEMA_VERSION:
        raise RuntimeError(
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
