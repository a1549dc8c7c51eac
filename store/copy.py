"""Copying a whole store to another: DuckDB into PostgreSQL (a team outgrowing one machine) and back.

Both stores are opened (and so migrated) by the caller, so they have the same schema. Every table
is copied in batches; a row already in the destination (by its key) is skipped, so an interrupted
copy is resumed by running it again, and the counts say how many rows were copied and skipped.
Captured completions keep their ``seq`` (their order, and what feedback and datasets point at) and
go through :func:`insert_records`, the bulk path of each backend (Arrow on DuckDB, ``COPY`` on
PostgreSQL); afterwards a PostgreSQL destination's sequence is moved past the copied numbers.
The destination is meant to be new, or an earlier (partial) copy of the same source: rows the
destination captured itself may share a ``seq`` with the source's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa

from .completions import _COLS, COLUMNS, insert_records
from .db import Store, registered, transaction

# Table -> the columns that identify a row (what "already copied" is tested on), in copy order:
# completions first (the rest points at them).
TABLES: dict[str, tuple[str, ...]] = {
    "completions": ("id",),
    "feedback": ("id",),
    "datasets": ("id",),
    "dataset_completions": ("dataset_id", "seq"),
    "eval_runs": ("id",),
    "eval_items": ("id",),
    "eval_outputs": ("id",),
    "eval_scores": ("id",),
    "finetune_jobs": ("id",),
    "finetune_job_status": ("id",),
    "finetune_job_events": ("id",),
    "local_students": ("id",),
    "endpoint_students": ("id",),
    "student_promotions": ("id",),
    "auto_policies": ("id",),
    "auto_cycles": ("id",),
    "auto_decisions": ("id",),
    "auto_routes": ("id",),
}
# auto_meta (the routes' change counter) is not copied row by row: see _copy_routes_version.


@dataclass
class CopyResult:
    copied: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # already in the destination


def _arrow_type(sql_type: str) -> pa.DataType:
    t = sql_type.upper()
    if t in ("BIGINT", "INT8"):
        return pa.int64()
    if t in ("INTEGER", "INT", "INT4"):
        return pa.int32()
    if t in ("DOUBLE", "DOUBLE PRECISION", "FLOAT", "REAL", "FLOAT8", "FLOAT4"):
        return pa.float64()
    if t in ("BOOLEAN", "BOOL"):
        return pa.bool_()
    return pa.string()  # VARCHAR, TEXT, character varying, jsonb (read back as text)


def _columns(store: Store, table: str) -> list[tuple[str, pa.DataType]]:
    rows = store.cursor().execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? AND table_schema = current_schema() ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return [(name, _arrow_type(typ)) for name, typ in rows]


def copy_store(
    src: Store, dst: Store, *, batch_size: int = 20_000, progress: Callable[[str, int], None] | None = None
) -> CopyResult:
    """Copy every table of ``src`` into ``dst`` (rows ``dst`` has already are skipped)."""
    if src.schema_version != dst.schema_version:
        raise ValueError(f"schema versions differ (source {src.schema_version}, destination {dst.schema_version})")
    result = CopyResult()
    _copy_completions(src, dst, batch_size, result, progress)
    for table, key in TABLES.items():
        if table != "completions":
            _copy_table(src, dst, table, key, batch_size, result, progress)
    _copy_routes_version(src, dst)
    if dst.dialect.name == "postgresql":  # new captures are numbered after the copied ones
        dst.seqs_above(int(dst.cursor().execute("SELECT coalesce(max(seq), 0) FROM completions").fetchone()[0]))
    return result


def _copy_routes_version(src: Store, dst: Store) -> None:
    """The route table's change counter only moves forward: the destination takes the larger."""
    row = src.cursor().execute("SELECT value FROM auto_meta WHERE key = 'routes_version'").fetchone()
    if row is not None:
        dst.cursor().execute(
            "UPDATE auto_meta SET value = ? WHERE key = 'routes_version' AND value < ?", [int(row[0]), int(row[0])]
        )


def _existing(dst: Store, table: str, column: str, values: list[Any]) -> set[Any]:
    cur = dst.cursor()
    cur.register("_protege_copy_keys", pa.table({"k": pa.array(values, pa.string())}))
    try:
        return {r[0] for r in cur.execute(f"SELECT {column} FROM {table} WHERE {column} IN (SELECT k FROM _protege_copy_keys)").fetchall()}
    finally:
        cur.unregister("_protege_copy_keys")


def _copy_completions(src: Store, dst: Store, batch_size: int, result: CopyResult, progress: Any) -> None:
    # Pages by seq (keyset): memory stays one batch on either backend (a PostgreSQL cursor would
    # otherwise fetch the whole table into this process).
    copied = skipped = 0
    cur = src.cursor()
    names = list(COLUMNS)
    last = None
    while rows := cur.execute(
        f"SELECT {_COLS} FROM completions WHERE seq > ? ORDER BY seq LIMIT ?",
        [last if last is not None else -(2**62), batch_size],
    ).fetchall():
        last = rows[-1][0]
        records = [dict(zip(names, row)) for row in rows]
        have = _existing(dst, "completions", "id", [r["id"] for r in records])
        fresh = [r for r in records if r["id"] not in have]
        insert_records(dst, fresh)
        copied += len(fresh)
        skipped += len(records) - len(fresh)
        if progress:
            progress("completions", len(records))
    result.copied["completions"], result.skipped["completions"] = copied, skipped


def _copy_table(
    src: Store, dst: Store, table: str, key: tuple[str, ...], batch_size: int, result: CopyResult, progress: Any
) -> None:
    cols = _columns(dst, table)
    if not cols:  # not in this schema version
        return
    names = [n for n, _ in cols]
    schema = pa.schema(cols)
    copied = skipped = 0
    cur = src.cursor()
    cur.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY {', '.join(key)}")
    match = " AND ".join(f"t.{k} = b.{k}" for k in key)
    while rows := cur.fetchmany(batch_size):
        batch = pa.Table.from_arrays([pa.array(col, typ) for col, (_, typ) in zip(zip(*rows), cols)], schema=schema)
        out = dst.cursor()
        with registered(out, "_protege_copy_batch", batch), transaction(out):
            before = int(out.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            out.execute(
                f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join('b.' + n for n in names)} "
                f"FROM _protege_copy_batch b WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {match})"
            )
            n = int(out.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) - before
        copied += n
        skipped += len(rows) - n
        if progress:
            progress(table, len(rows))
    result.copied[table], result.skipped[table] = copied, skipped


__all__ = ["TABLES", "CopyResult", "copy_store"]
