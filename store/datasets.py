"""Dataset versions and the SQL side of building them.

The builder needs to look at up to millions of captures; every filter and the exact dedupe run
here, inside DuckDB, over one pass that stores only small per-row flags in a temp table. Python then
streams just the surviving rows in Arrow batches. Each built version is recorded with its options,
counts, file hashes and the completions it used (a link table), so a dataset can be reproduced
and audited.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson
import pyarrow as pa
from sqlmodel import Field, SQLModel

from .completions import completion_filter
from .db import Store, registered, transaction
from .feedback import latest_feedback
from .pg import PgCursor


class DatasetVersionRow(SQLModel, table=True):
    __tablename__ = "datasets"

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    version: int
    kind: str = "sft"
    created_at: int
    options: str = "{}"
    counts: str = "{}"
    stats: str = "{}"
    files: str = "{}"  # {"train": {"path":..., "sha256":..., "bytes":..., "lines":...}, ...}
    system_prompt: str | None = None
    system_prompt_sha256: str | None = None


class DatasetCompletion(SQLModel, table=True):
    """Which captures a dataset version used, and on which side of the split."""

    __tablename__ = "dataset_completions"

    dataset_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    completion_id: str
    split: str


def new_dataset_id() -> str:
    # Time-ordered (nanoseconds, then randomness): ids sort in creation order, so lists that break
    # ties on the same second by id stay chronological.
    return "ds_" + format(time.time_ns(), "016x") + secrets.token_hex(4)


# ---------------------------------------------------------------------------------------------
# Selection


@dataclass
class Selection:
    """Filters pushed into SQL. Values are always bound parameters."""

    models: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    since: int | None = None
    until: int | None = None
    require_ok: bool = True
    # Only answers the teacher gave to real traffic: never train a student on its own (or another
    # student's) answers, nor on shadow/comparison captures.
    exclude_students: bool = True
    finish_reasons: list[str] | None = field(default_factory=lambda: ["stop", "tool_calls"])
    exclude_refusals: bool = True
    refusal_pattern: str | None = None  # a regex over the lower-cased answer
    # The same test as lower-cased literal phrases (the regex's alternatives), where the caller has
    # them: PostgreSQL matches them with LIKE ANY, ~40 % cheaper than its regex engine on the
    # alternation (DuckDB's RE2 takes the regex).
    refusal_phrases: list[str] | None = None
    min_score: float | None = None
    exclude_rejected: bool = True
    dedupe: bool = True
    # A regex superset of the PII patterns: rows it does not match skip Python-side scrubbing.
    scrub_trigger: str | None = None


def _scope(store: Store, sel: Selection) -> tuple[str, list[Any]]:
    """The selection's scope through the store's one completion filter (``exclude_students`` is
    teacher traffic only: no student's answer, no shadow)."""
    return completion_filter(
        models=sel.models, metadata=sel.metadata, since=sel.since, until=sel.until, teacher_only=sel.exclude_students,
        dialect=store.dialect,
    )


# What the kept rows carry from the candidates (so that fetching them joins only the captures).
_KEEP_COLS = "seq, needs_scrub, fb_score, fb_label, fb_correction, fb_accepted"

STEPS = ("selected", "status_ok", "finish_reason", "no_refusal", "min_score", "exact_dedupe")


def prepare_selection(store: Store, sel: Selection) -> tuple[duckdb.DuckDBPyConnection, dict[str, int]]:
    """Run every SQL filter once into a temp table on a fresh cursor; return it and counts per step.

    A step's count is the number of rows left after it, so the dataset card can show what each
    filter removed. A corrected answer (feedback) replaces the teacher's, so it passes the
    finish-reason and refusal checks that judged the teacher's answer.

    Cost matters at millions of rows: each JSON column is parsed once (multi-path extracts). Exact
    duplicate means: the same conversation (messages and tools, re-serialised by DuckDB so that
    whitespace and formatting do not matter; metadata and sampling parameters are ignored) and the
    same final answer. md5, not DuckDB's hash(): that one is not collision-resistant on
    near-identical strings (two digit changes can cancel out).
    """
    cur = store.cursor()
    scope, params = _scope(store, sel)
    pg = store.dialect.name == "postgresql"
    # PostgreSQL: x/y are the same extracts as columns (no multi-path extract, no lists), `~` for
    # regexp_matches (the patterns keep to the syntax both engines read), md5 text for md5_number.
    x1, x2, x3, y1, y2 = ("x1", "x2", "x3", "y1", "y2") if pg else ("x[1]", "x[2]", "x[3]", "y[1]", "y[2]")
    ok = "(c.outcome = 'ok' AND c.response IS NOT NULL)" if sel.require_ok else "c.response IS NOT NULL"
    if sel.finish_reasons:
        fin = f"(fb.correction IS NOT NULL OR {store.dialect.in_list('c.finish_reason')})"
        fin_params: list[Any] = [list(sel.finish_reasons)]
    else:
        fin, fin_params = "TRUE", []
    if sel.exclude_refusals:
        ref = f"(fb.correction IS NOT NULL OR ({x2} IS NULL"
        ref_params: list[Any] = []
        if pg and sel.refusal_phrases:
            ref += f" AND NOT coalesce(lower(left({x1}, 260)) LIKE ANY(?), false)"
            ref_params.append(["%" + _like_escape(p) + "%" for p in sel.refusal_phrases])
        elif sel.refusal_pattern:
            ref += f" AND NOT coalesce({_matches(pg, f'lower(left({x1}, 260))')}, false)"
            ref_params.append(sel.refusal_pattern)
        ref += "))"
    else:
        ref, ref_params = "TRUE", []
    if sel.min_score is not None:
        score = "coalesce(fb.score >= ?, false)"
        score_params: list[Any] = [float(sel.min_score)]
    else:
        score, score_params = "TRUE", []
    if sel.exclude_rejected:
        score = f"({score} AND coalesce(fb.accepted, true))"
    conv = (
        f"coalesce(CAST({y1} AS VARCHAR), '') || chr(1) || coalesce(CAST({y2} AS VARCHAR), '') || chr(1) || "
        f"coalesce(fb.correction, {x1}, '') || chr(1) || coalesce({x3}, '')"
    )
    if sel.scrub_trigger and pg:
        # PostgreSQL's regex engine takes ~175 us a row for the trigger's alternation (DuckDB's RE2
        # a fraction of that): every row goes to the Python scrub, which decides anyway (the trigger
        # is only a superset pre-check), and costs less than the SQL test there.
        flag, flag_params = "true", []
    elif sel.scrub_trigger:
        flag, flag_params = f"coalesce({_matches(pg, conv)}, false)", [sel.scrub_trigger]
    else:
        flag, flag_params = "false", []
    if pg:
        cur.execute("DROP TABLE IF EXISTS pg_temp._ds_cand")
        cur.execute("DROP TABLE IF EXISTS pg_temp._ds_keep")
        # Function scans, not expressions: each JSON column is parsed once a row. (Extracts in a
        # subquery are pulled up and copied into every reference below: the response was parsed
        # ~5 times a row and the request twice, 3/4 of the selection's time at 1M rows.) The
        # writers store request and response as JSON objects (or a NULL response), which
        # jsonb_to_record needs; a message that is not an object reads as no message.
        extracts = """
            SELECT c.*, m.content AS x1, m.refusal AS x2, m.tool_calls AS x3, rq.messages AS y1, rq.tools AS y2
            FROM completions c
            LEFT JOIN LATERAL jsonb_to_record(c.response::jsonb) AS r(choices jsonb) ON true
            LEFT JOIN LATERAL jsonb_to_record(CASE WHEN jsonb_typeof(r.choices -> 0 -> 'message') = 'object'
                                                   THEN r.choices -> 0 -> 'message' END)
                 AS m(content text, refusal text, tool_calls text) ON true
            LEFT JOIN LATERAL jsonb_to_record(c.request::jsonb) AS rq(messages jsonb, tools jsonb) ON true
        """
        create, dkey = "CREATE TEMP TABLE _ds_cand AS", f"md5({conv})"
    else:
        extracts = """
            SELECT c.*, json_extract_string(c.response, ['$.choices[0].message.content',
                       '$.choices[0].message.refusal', '$.choices[0].message.tool_calls']) AS x,
                   json_extract(c.request, ['$.messages', '$.tools']) AS y
            FROM completions c
        """
        create, dkey = "CREATE OR REPLACE TEMP TABLE _ds_cand AS", f"md5_number({conv})"
    sql = f"""
        {create}
        WITH fb AS ({latest_feedback(store.dialect)}), scoped AS (
            {extracts} WHERE {scope}
        ), flagged AS (
            SELECT c.seq,
                   {ok} AS f_ok,
                   {fin} AS f_fin,
                   {ref} AS f_ref,
                   {score} AS f_score,
                   fb.score AS fb_score, fb.label AS fb_label, fb.correction AS fb_correction,
                   fb.accepted AS fb_accepted,
                   {dkey} AS dkey,
                   {flag} AS needs_scrub
            FROM scoped c LEFT JOIN fb ON fb.completion_id = c.id
        )
        SELECT *, (f_ok AND f_fin AND f_ref AND f_score) AS f_pass FROM flagged
    """
    cur.execute(sql, params + fin_params + ref_params + score_params + flag_params)
    if sel.dedupe and pg:
        keep = f"SELECT DISTINCT ON (dkey) {_KEEP_COLS} FROM _ds_cand WHERE f_pass ORDER BY dkey, seq"
    elif sel.dedupe:
        keep = f"SELECT {_KEEP_COLS} FROM _ds_cand WHERE f_pass QUALIFY row_number() OVER (PARTITION BY dkey ORDER BY seq) = 1"
    else:
        keep = f"SELECT {_KEEP_COLS} FROM _ds_cand WHERE f_pass"
    cur.execute(f"{'CREATE' if pg else 'CREATE OR REPLACE'} TEMP TABLE _ds_keep AS {keep}")
    row = cur.execute(
        """
        SELECT count(*),
               count(*) FILTER (WHERE f_ok),
               count(*) FILTER (WHERE f_ok AND f_fin),
               count(*) FILTER (WHERE f_ok AND f_fin AND f_ref),
               count(*) FILTER (WHERE f_pass),
               (SELECT count(*) FROM _ds_keep)
        FROM _ds_cand
        """
    ).fetchall()[0]
    return cur, {name: int(v or 0) for name, v in zip(STEPS, row)}


def _matches(pg: bool, text: str) -> str:
    """``text`` matches the regex bound as the next parameter."""
    return f"({text} ~ ?)" if pg else f"regexp_matches({text}, ?)"


def _like_escape(text: str) -> str:
    """A literal for LIKE: its wildcards and the escape character (backslash) escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def top_system_prompt(cur: Any) -> tuple[str | None, int, int]:
    """The most common leading system prompt among the kept rows: (text, its count, kept rows)."""
    total = int(cur.execute("SELECT count(*) FROM _ds_keep").fetchall()[0][0])
    if isinstance(cur, PgCursor):
        first = "SELECT c.request::jsonb #>> '{messages,0,content}' AS sys, c.request::jsonb #>> '{messages,0,role}' AS role"
    else:
        first = (
            "SELECT json_extract_string(c.request, '$.messages[0].content') AS sys, "
            "json_extract_string(c.request, '$.messages[0].role') AS role"
        )
    row = cur.execute(
        f"""
        SELECT sys, count(*) AS n FROM (
            {first}
            FROM _ds_keep k JOIN completions c ON c.seq = k.seq
        ) AS firsts WHERE role IN ('system', 'developer') AND sys IS NOT NULL
        GROUP BY sys ORDER BY n DESC, sys LIMIT 1
        """
    ).fetchall()
    if not row:
        return None, 0, total
    row = row[0]
    return row[0], int(row[1]), total


KEPT_COLUMNS = (
    "seq", "id", "created", "request", "response", "metadata", "prompt_tokens", "completion_tokens",
    "fb_score", "fb_label", "fb_correction", "fb_accepted", "needs_scrub",
)


_KEPT_SQL = """
    SELECT c.seq, c.id, c.created, c.request, c.response, c.metadata, c.prompt_tokens, c.completion_tokens,
           k.fb_score, k.fb_label, k.fb_correction, k.fb_accepted, k.needs_scrub
    FROM _ds_keep k JOIN completions c ON c.seq = k.seq
    ORDER BY c.seq
"""
# The batches' Arrow schema (DuckDB's own for _KEPT_SQL; PostgreSQL's COPY output is parsed into it).
KEPT_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("id", pa.string()), ("created", pa.int64()), ("request", pa.string()),
    ("response", pa.string()), ("metadata", pa.string()), ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()), ("fb_score", pa.float64()), ("fb_label", pa.string()),
    ("fb_correction", pa.string()), ("fb_accepted", pa.bool_()), ("needs_scrub", pa.bool_()),
])


def iter_kept_batches(cur: Any, batch_size: int = 20_000) -> Iterator[pa.RecordBatch]:
    """The surviving rows in capture order, as Arrow batches (never all in memory at once)."""
    if isinstance(cur, PgCursor):
        # COPY parsed into Arrow (not a cursor's tuples): streamed, no Python object per value.
        yield from cur.arrow_batches(_KEPT_SQL, KEPT_SCHEMA, batch_size)
        return
    yield from cur.sql(_KEPT_SQL).to_arrow_reader(batch_size)


def drop_selection(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute("DROP TABLE IF EXISTS _ds_keep")
    cur.execute("DROP TABLE IF EXISTS _ds_cand")


# ---------------------------------------------------------------------------------------------
# Versions


def next_version(store: Store, name: str) -> int:
    row = store.cursor().execute("SELECT coalesce(max(version), 0) FROM datasets WHERE name = ?", [name]).fetchone()
    return int(row[0]) + 1


def save_dataset(store: Store, row: DatasetVersionRow, links: pa.Table | None = None) -> DatasetVersionRow:
    """Record a version and its completion links (bulk, via Arrow) in one transaction."""
    cur = store.cursor()
    with transaction(cur):
        cur.execute(
            "INSERT INTO datasets (id, name, version, kind, created_at, options, counts, stats, files, system_prompt, system_prompt_sha256) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row.id, row.name, row.version, row.kind, row.created_at, row.options, row.counts, row.stats, row.files,
             row.system_prompt, row.system_prompt_sha256],
        )
        if links is not None and links.num_rows:
            with registered(cur, "_ds_links", links):
                cur.execute(
                    "INSERT INTO dataset_completions (dataset_id, seq, completion_id, split) "
                    "SELECT ?, seq, completion_id, split FROM _ds_links",
                    [row.id],
                )
    return row


_VCOLS = "id, name, version, kind, created_at, options, counts, stats, files, system_prompt, system_prompt_sha256"


def _row(r: tuple) -> DatasetVersionRow:
    return DatasetVersionRow(**dict(zip(_VCOLS.split(", "), r)))


def get_dataset_row(store: Store, dataset_id: str) -> DatasetVersionRow | None:
    r = store.cursor().execute(f"SELECT {_VCOLS} FROM datasets WHERE id = ?", [dataset_id]).fetchone()
    return _row(r) if r else None


def list_dataset_rows(store: Store, name: str | None = None, after: str | None = None, limit: int = 100) -> tuple[list[DatasetVersionRow], bool]:
    """Newest first."""
    where, params = ["TRUE"], []
    if name is not None:
        where.append("name = ?")
        params.append(name)
    cur = store.cursor()
    if after:
        pos = cur.execute("SELECT created_at, id FROM datasets WHERE id = ?", [after]).fetchone()
        if pos is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [pos[0], pos[0], pos[1]]
    rows = cur.execute(
        f"SELECT {_VCOLS} FROM datasets WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT ?",
        params + [int(limit) + 1],
    ).fetchall()
    return [_row(r) for r in rows[:limit]], len(rows) > limit


def dataset_completion_ids(store: Store, dataset_id: str, split: str | None = None) -> list[str]:
    if split is None:
        rows = store.cursor().execute(
            "SELECT completion_id FROM dataset_completions WHERE dataset_id = ? ORDER BY seq", [dataset_id]
        ).fetchall()
    else:
        rows = store.cursor().execute(
            "SELECT completion_id FROM dataset_completions WHERE dataset_id = ? AND split = ? ORDER BY seq", [dataset_id, split]
        ).fetchall()
    return [r[0] for r in rows]


def now() -> int:
    return int(time.time())


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


__all__ = [
    "STEPS",
    "DatasetCompletion",
    "DatasetVersionRow",
    "Selection",
    "dataset_completion_ids",
    "drop_selection",
    "get_dataset_row",
    "iter_kept_batches",
    "list_dataset_rows",
    "new_dataset_id",
    "next_version",
    "prepare_selection",
    "save_dataset",
    "top_system_prompt",
]
