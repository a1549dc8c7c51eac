"""Numbered schema migrations, so that a newer release opens a file written by an older one.

Each migration runs once, in order, inside a transaction, and records its number in
``protege_schema``. Never edit a migration that has been released; add a new one.

Every migration is literal SQL. Versions 2-4 used to compile their DDL from the SQLModel classes of
the running code, so editing a model silently edited a released migration (and this module imported
the table modules, which imported it back). They are frozen here as the exact DDL those classes
produced (duckdb-engine's dialect: ``FLOAT`` is DuckDB's 4-byte REAL, ``PRIMARY KEY (id)`` after
the columns, ``ix_<table>_<column>`` index names). A model change now needs a new migration;
tests/test_store_migrate.py compares an upgraded store's schema with a snapshot. This module imports
nothing from the store.

PostgreSQL: :data:`PG_MIGRATIONS` holds a PostgreSQL variant of each migration whose SQL differs,
beside the DuckDB one (whose text stays as released); the others run as they are on both. The
variants differ in types (``DOUBLE PRECISION``, ``jsonb`` metadata with a GIN index for the Stored
API's metadata filter, no ``meta_pairs`` list), in ``seq`` (an identity column: several replicas
draw capture numbers from the database) and in functions (``gen_random_uuid``, window subqueries
for ``QUALIFY``/``arg_max``). The version numbers are the same, and ``protege_schema`` records them.
Migrations on PostgreSQL run under an advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import duckdb


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
    # per pair) is the relational form for joins and analytics (retired by migration 7: nothing read it).
    conn.execute("CREATE TABLE completion_metadata (seq BIGINT NOT NULL, key VARCHAR NOT NULL, value VARCHAR NOT NULL)")


def _v2_evals(conn: duckdb.DuckDBPyConnection) -> None:
    # Eval runs: the run, its frozen items, generated outputs and item scores (store/evals.py).
    conn.execute(
        """
        CREATE TABLE eval_runs (
            id VARCHAR NOT NULL,
            created_at INTEGER NOT NULL,
            name VARCHAR,
            status VARCHAR NOT NULL,
            spec VARCHAR NOT NULL,
            n_items INTEGER NOT NULL,
            n_candidates INTEGER NOT NULL,
            started_at INTEGER,
            completed_at INTEGER,
            error VARCHAR,
            results VARCHAR,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE eval_items (
            id VARCHAR NOT NULL,
            run_id VARCHAR NOT NULL,
            idx INTEGER NOT NULL,
            source_id VARCHAR,
            messages VARCHAR NOT NULL,
            params VARCHAR NOT NULL,
            reference VARCHAR,
            reference_kind VARCHAR NOT NULL,
            teacher_output VARCHAR,
            teacher_model VARCHAR,
            teacher_prompt_tokens INTEGER,
            teacher_completion_tokens INTEGER,
            teacher_latency_ms FLOAT,
            metadata VARCHAR NOT NULL,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_eval_items_run_id ON eval_items (run_id)")
    conn.execute(
        """
        CREATE TABLE eval_outputs (
            id VARCHAR NOT NULL,
            run_id VARCHAR NOT NULL,
            item_id VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            output VARCHAR,
            model VARCHAR,
            latency_ms FLOAT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            attempts INTEGER NOT NULL,
            error VARCHAR,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_eval_outputs_run_id ON eval_outputs (run_id)")
    conn.execute(
        """
        CREATE TABLE eval_scores (
            id VARCHAR NOT NULL,
            run_id VARCHAR NOT NULL,
            item_id VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            metric VARCHAR NOT NULL,
            score FLOAT,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_eval_scores_run_id ON eval_scores (run_id)")


def _v3_distill(conn: duckdb.DuckDBPyConnection) -> None:
    # Feedback on captures (store/feedback.py).
    conn.execute(
        """
        CREATE TABLE feedback (
            id VARCHAR PRIMARY KEY,
            completion_id VARCHAR NOT NULL,
            completion_seq BIGINT,
            created_at BIGINT NOT NULL,
            score DOUBLE,
            label VARCHAR,
            correction VARCHAR,
            comment VARCHAR,
            accepted BOOLEAN,
            source VARCHAR NOT NULL DEFAULT 'api',
            metadata VARCHAR NOT NULL DEFAULT '{}'
        )
        """
    )
    conn.execute("CREATE INDEX feedback_completion_id ON feedback(completion_id)")
    # Dataset versions and the captures each used (store/datasets.py).
    conn.execute(
        """
        CREATE TABLE datasets (
            id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            kind VARCHAR NOT NULL DEFAULT 'sft',
            created_at BIGINT NOT NULL,
            options VARCHAR NOT NULL DEFAULT '{}',
            counts VARCHAR NOT NULL DEFAULT '{}',
            stats VARCHAR NOT NULL DEFAULT '{}',
            files VARCHAR NOT NULL DEFAULT '{}',
            system_prompt VARCHAR,
            system_prompt_sha256 VARCHAR
        )
        """
    )
    conn.execute("CREATE INDEX datasets_name ON datasets(name)")
    # No primary key: DuckDB checks ART constraints row by row, which would slow 1M-link inserts.
    conn.execute(
        "CREATE TABLE dataset_completions (dataset_id VARCHAR NOT NULL, seq BIGINT NOT NULL, "
        "completion_id VARCHAR NOT NULL, split VARCHAR NOT NULL)"
    )
    # Fine-tune jobs, their status history and events, and local student models (store/jobs.py).
    conn.execute(
        """
        CREATE TABLE finetune_jobs (
            id VARCHAR NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            finished_at INTEGER,
            backend VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            method VARCHAR NOT NULL,
            dataset_id VARCHAR,
            training_file VARCHAR,
            validation_file VARCHAR,
            hyperparameters VARCHAR NOT NULL,
            suffix VARCHAR,
            seed INTEGER,
            job_metadata VARCHAR NOT NULL,
            name VARCHAR,
            provider_job_id VARCHAR,
            provider_files VARCHAR NOT NULL,
            fine_tuned_model VARCHAR,
            result VARCHAR NOT NULL,
            error VARCHAR,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE finetune_job_status (
            id VARCHAR NOT NULL,
            job_id VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            changed_at DOUBLE PRECISION NOT NULL,
            message VARCHAR,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_finetune_job_status_job_id ON finetune_job_status (job_id)")
    conn.execute(
        """
        CREATE TABLE finetune_job_events (
            id VARCHAR NOT NULL,
            job_id VARCHAR NOT NULL,
            seq INTEGER NOT NULL,
            created_at BIGINT NOT NULL,
            level VARCHAR NOT NULL,
            type VARCHAR NOT NULL,
            message VARCHAR NOT NULL,
            data VARCHAR,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_finetune_job_events_job_id ON finetune_job_events (job_id)")
    conn.execute(
        """
        CREATE TABLE local_students (
            id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            created_at BIGINT NOT NULL,
            path VARCHAR NOT NULL,
            sha256 VARCHAR NOT NULL,
            manifest_path VARCHAR NOT NULL,
            manifest VARCHAR NOT NULL,
            job_id VARCHAR,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_local_students_name ON local_students (name)")


def _v4_auto(conn: duckdb.DuckDBPyConnection) -> None:
    # Automatic distillation: policies, cycles, decisions, routes (store/auto.py).
    conn.execute(
        """
        CREATE TABLE auto_policies (
            id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            spec VARCHAR NOT NULL,
            enabled BOOLEAN NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_auto_policies_name ON auto_policies (name)")
    conn.execute(
        """
        CREATE TABLE auto_cycles (
            id VARCHAR NOT NULL,
            policy_id VARCHAR NOT NULL,
            state VARCHAR NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            until_seq INTEGER NOT NULL,
            dataset_id VARCHAR,
            job_id VARCHAR,
            student_model VARCHAR,
            evaluation VARCHAR,
            decision_id VARCHAR,
            error VARCHAR,
            attempts INTEGER NOT NULL,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_auto_cycles_policy_id ON auto_cycles (policy_id)")
    conn.execute(
        """
        CREATE TABLE auto_decisions (
            id VARCHAR NOT NULL,
            policy_id VARCHAR NOT NULL,
            cycle_id VARCHAR,
            route_id VARCHAR,
            kind VARCHAR NOT NULL,
            outcome VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            details VARCHAR NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_auto_decisions_policy_id ON auto_decisions (policy_id)")
    conn.execute(
        """
        CREATE TABLE auto_routes (
            id VARCHAR NOT NULL,
            policy_id VARCHAR NOT NULL,
            cycle_id VARCHAR,
            student_model VARCHAR NOT NULL,
            match_model VARCHAR,
            match_metadata VARCHAR NOT NULL,
            stage VARCHAR NOT NULL,
            percent DOUBLE PRECISION NOT NULL,
            compare_percent DOUBLE PRECISION NOT NULL,
            timeout DOUBLE PRECISION NOT NULL,
            active BOOLEAN NOT NULL,
            stage_started_at DOUBLE PRECISION NOT NULL,
            stage_started_seq INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION,
            PRIMARY KEY (id)
        )
        """
    )
    conn.execute("CREATE INDEX ix_auto_routes_policy_id ON auto_routes (policy_id)")
    # A change counter: the proxy's route table reloads only when it moves.
    conn.execute("CREATE TABLE auto_meta (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL)")
    conn.execute("INSERT INTO auto_meta VALUES ('routes_version', 0)")


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


def _v7_drop_completion_metadata(conn: duckdb.DuckDBPyConnection) -> None:
    # The second copy of each capture's metadata (one row per pair) retires: every filter tests
    # `completions.meta_pairs` on the row itself (store/completions.completion_filter), which the
    # semi-join on this table was 5-25x slower than (bench/bench_store.py), and nothing else read
    # it. The pairs stay in `metadata` (JSON) and `meta_pairs`, so nothing is lost.
    conn.execute("DROP TABLE completion_metadata")


# ---------------------------------------------------------------------------------------------
# PostgreSQL variants (only where the DuckDB SQL above differs). Released with the first
# PostgreSQL support; never edit one either. Each is derived from its DuckDB migration by a fixed
# translation of the statements that migration executes (the DuckDB text stays as released), so
# the two dialects' text lives once; tests/test_store_migrations.py freezes what each variant
# executes, so an edit to either side, or to a rewrite, fails there instead of reaching a database.

# DuckDB's DOUBLE (8 bytes) is PostgreSQL's DOUBLE PRECISION; a DuckDB DOUBLE PRECISION stays.
_PG_DOUBLE = (r"\bDOUBLE\b(?! PRECISION)", "DOUBLE PRECISION")


class _AsPostgres:
    """A connection that runs a DuckDB migration's statements as their PostgreSQL text: each
    statement goes through :data:`_PG_DOUBLE` and the variant's own ``(pattern, replacement)``
    rewrites (:func:`re.sub`). Every rewrite must apply exactly once over the migration
    (:meth:`check`): one that stops matching means the DuckDB text moved, and is an error rather
    than a silently different schema."""

    def __init__(self, conn: Any, rewrites: tuple[tuple[str, str], ...]) -> None:
        self._conn = conn
        self._rewrites = rewrites
        self._applied = [0] * len(rewrites)

    def execute(self, sql: str, *params: Any) -> Any:
        sql = re.sub(*_PG_DOUBLE, sql)
        for i, (pattern, replacement) in enumerate(self._rewrites):
            sql, n = re.subn(pattern, replacement, sql)
            self._applied[i] += n
        return self._conn.execute(sql, *params)

    def check(self) -> None:
        for (pattern, _), n in zip(self._rewrites, self._applied):
            if n != 1:
                raise RuntimeError(f"PostgreSQL rewrite {pattern!r} applied {n} times, not once")


def _pg_variant(
    duckdb_migration: Callable[[Any], None], rewrites: tuple[tuple[str, str], ...] = (), then: tuple[str, ...] = ()
) -> Callable[[Any], None]:
    """The PostgreSQL form of ``duckdb_migration``: its statements rewritten, then ``then`` (what
    only PostgreSQL has, such as the indexes DuckDB's ART constraints made too slow)."""

    def variant(conn: Any) -> None:
        translated = _AsPostgres(conn, rewrites)
        duckdb_migration(translated)
        translated.check()
        for sql in then:
            conn.execute(sql)

    variant.__name__ = f"_pg{duckdb_migration.__name__}"
    return variant


# As _v1_completions, with: `seq` an identity (capture numbers from the database, so several
# replicas never give one twice); `metadata` as jsonb with a GIN index (jsonb_path_ops serves
# `metadata @> '{"k": "v"}'`, the Stored API's metadata filter), so no `meta_pairs` list;
# an index on (created, seq), the Stored API's page order.
_pg_v1_completions = _pg_variant(
    _v1_completions,
    rewrites=(
        (r"(?m)^(\s+)seq BIGINT NOT NULL,$", r"\1seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"),
        (r"(?m)^(\s+)metadata VARCHAR NOT NULL", r"\1metadata JSONB NOT NULL"),
        (r",\n\s+meta_pairs VARCHAR\[\]", ""),
    ),
    then=(
        "CREATE INDEX completions_created_seq ON completions(created, seq)",
        "CREATE INDEX completions_metadata ON completions USING gin (metadata jsonb_path_ops)",
    ),
)

# As _v3_distill, with an index on the dataset links.
_pg_v3_distill = _pg_variant(
    _v3_distill, then=("CREATE INDEX dataset_completions_dataset_id ON dataset_completions(dataset_id)",)
)

# As _v5_unique_ids: PostgreSQL has no QUALIFY, arg_max or uuid(); a window subquery, an ordered
# subquery and gen_random_uuid() say the same. (PostgreSQL can alter an indexed table; the index
# is dropped and rebuilt anyway, as on DuckDB.)
_pg_v5_unique_ids = _pg_variant(
    _v5_unique_ids,
    rewrites=(
        (r"\buuid\(\)", "gen_random_uuid()"),
        (
            r"SELECT seq FROM completions\n(\s+)QUALIFY (.+) > 1",
            r"SELECT seq FROM (\n\1    SELECT seq, \2 AS n FROM completions\n\1) ranked WHERE n > 1",
        ),
        (
            r"\(SELECT arg_max\(([\w.]+), ([\w.]+)\) FROM ([^\n]+)\n(\s+)(WHERE [^\n]+)\),",
            r"(SELECT \1 FROM \3\n\4\5\n\4ORDER BY \2 DESC LIMIT 1),",
        ),
    ),
)

# As _v6_students; DuckDB's DOUBLE is PostgreSQL's DOUBLE PRECISION.
_pg_v6_students = _pg_variant(_v6_students)

def _v8_upstream_id_index(conn: duckdb.DuckDBPyConnection) -> None:
    # Nothing on DuckDB: a lookup by upstream id (store/ids.py, the import's idempotence) scans one
    # column of the file, and an ART index would slow every bulk insert. PostgreSQL's variant adds
    # the btree that lookup needs there (a scan of every row's upstream_id per batch otherwise).
    del conn


def _pg_v8_upstream_id_index(conn: Any) -> None:
    conn.execute("CREATE INDEX completions_upstream_id ON completions(upstream_id)")


# Version -> PostgreSQL variant; a version not listed runs its DuckDB SQL unchanged (2, 4, 7: their
# SQL is PostgreSQL's too).
PG_MIGRATIONS: dict[int, Callable[[Any], None]] = {
    1: _pg_v1_completions,
    3: _pg_v3_distill,
    5: _pg_v5_unique_ids,
    6: _pg_v6_students,
    8: _pg_v8_upstream_id_index,
}

MIGRATIONS: list[tuple[int, str, Callable[[duckdb.DuckDBPyConnection], None]]] = [
    (1, "completions", _v1_completions),
    (2, "evals", _v2_evals),
    (3, "distill", _v3_distill),
    (4, "auto", _v4_auto),
    (5, "unique_ids", _v5_unique_ids),
    (6, "students", _v6_students),
    (7, "drop_completion_metadata", _v7_drop_completion_metadata),
    (8, "upstream_id_index", _v8_upstream_id_index),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaTooNewError(RuntimeError):
    """The file was written by a newer Protege; opening it could corrupt it, so we refuse."""


def current_version(conn: duckdb.DuckDBPyConnection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS protege_schema (version INTEGER NOT NULL, name VARCHAR, applied_at TIMESTAMP DEFAULT now())")
    row = conn.execute("SELECT max(version) FROM protege_schema").fetchone()
    return int(row[0] or 0)


# The advisory lock PostgreSQL migrations hold (any fixed number; this one spells "protege").
_PG_MIGRATE_LOCK = 0x70726F74656765


def migrate(conn: Any, target: int | None = None, dialect: str = "duckdb") -> int:
    """Apply pending migrations up to ``target`` (default: all). Returns the resulting version.

    ``conn`` is a DuckDB connection, or a :class:`~protege.store.pg.PgCursor` with
    ``dialect="postgresql"``."""
    if dialect == "postgresql":
        conn.execute("SELECT pg_advisory_lock(?)", [_PG_MIGRATE_LOCK])
        try:
            return _migrate(conn, target, PG_MIGRATIONS)
        finally:
            conn.execute("SELECT pg_advisory_unlock(?)", [_PG_MIGRATE_LOCK])
    return _migrate(conn, target, {})


def _migrate(conn: Any, target: int | None, variants: dict[int, Callable[[Any], None]]) -> int:
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
            variants.get(number, fn)(conn)
            conn.execute("INSERT INTO protege_schema (version, name) VALUES (?, ?)", [number, name])
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        version = number
    return version
