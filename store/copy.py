"""Copying a whole store to another: DuckDB into PostgreSQL (a team outgrowing one machine) and back.

Both stores are opened by the caller and must have the same schema version (checked; `protege
store copy` opens the source read-only, so an older source is refused, not migrated). Every table
is copied in batches; a row already in the destination (by its key) is skipped, so an interrupted
copy is resumed by running it again, and the counts say how many rows were copied and skipped.
Captured completions keep their ``seq`` (their order, and what feedback and datasets point at; see
``append`` below for the one exception) and
are read as Arrow tables, a range of ``seq`` at a time, and written by :func:`insert_table` (Arrow
on DuckDB; Arrow's CSV through one ``COPY`` on PostgreSQL), with no Python object per row; afterwards
the destination's sequence (or counter) is moved past the copied numbers.

A destination with captures of its own (any completion that is not the source's, with the source's
``seq``) is refused (:class:`DestinationHasOwnRows`): the source's numbers would collide with its
own. ``append=True`` copies the source's completions after the destination's, renumbered (each
copied ``seq`` moved by one offset per run, past the destination's largest), and re-points what
refers to a completion's number: ``feedback.completion_seq`` and ``dataset_completions.seq`` by the
completion's id (so a rerun, with another offset, still points at the right row), the cycles' and
routes' watermarks (``until_seq``, ``stage_started_seq``) by the run's offset. On PostgreSQL the
sequence is moved past the numbers a copy will use before the first row is written, so a replica
capturing during the copy never draws one of them. A source completion whose id the destination
holds already is taken as copied (ids are minted unique, migration 5).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .completions import _COLS, COLUMNS, SCHEMA, insert_table
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

# Columns holding a completion's seq, re-pointed by the completion's id when a copy renumbers.
SEQ_REFS: dict[str, tuple[str, str]] = {
    "feedback": ("completion_seq", "completion_id"),
    "dataset_completions": ("seq", "completion_id"),
}
# Seq watermarks ("captures up to / since this number"), moved by the run's offset when it renumbers.
WATERMARKS: dict[str, tuple[str, ...]] = {"auto_cycles": ("until_seq",), "auto_routes": ("stage_started_seq",)}


class DestinationHasOwnRows(ValueError):
    """The destination holds completions that are not the source's: copying with the source's
    ``seq`` values would give two captures one number (``append=True`` renumbers instead)."""

    def __init__(self, held: int) -> None:
        super().__init__(f"the destination already holds captures of its own ({held:,} completions, not a copy of the source)")
        self.held = held


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
    src: Store,
    dst: Store,
    *,
    batch_size: int = 50_000,
    progress: Callable[[str, int], None] | None = None,
    streams: int | None = None,
    append: bool = False,
) -> CopyResult:
    """Copy every table of ``src`` into ``dst`` (rows ``dst`` has already are skipped).

    ``streams``: parallel writers of completions (default 4 into PostgreSQL, 1 into DuckDB).
    ``append``: ``dst`` may hold captures of its own; the copied ones are numbered after them
    (without it such a ``dst`` raises :class:`DestinationHasOwnRows` before anything is written)."""
    if src.schema_version != dst.schema_version:
        raise ValueError(f"schema versions differ (source {src.schema_version}, destination {dst.schema_version})")
    offset = _offset(src, dst, batch_size, append)
    src_max = src.cursor().execute("SELECT coalesce(max(seq), 0) FROM completions").fetchone()[0]
    if dst.dialect.name == "postgresql":
        dst.seqs_above(int(src_max) + offset)  # live captures on dst draw numbers past the copy's
    result = CopyResult()
    _copy_completions(src, dst, batch_size, result, progress, streams, offset, renumbered=append)
    for table, key in TABLES.items():
        if table != "completions":
            _copy_table(src, dst, table, key, batch_size, result, progress, offset, renumbered=append)
    _copy_routes_version(src, dst)
    # new captures are numbered after the copied ones (PostgreSQL's sequence, DuckDB's counter)
    dst.seqs_above(int(dst.cursor().execute("SELECT coalesce(max(seq), 0) FROM completions").fetchone()[0]))
    if dst.dialect.name == "postgresql" and result.copied.get("completions"):
        # Fresh statistics at once (autovacuum would take its time): the filtered list's plan
        # choice reads them (store/completions._pg_filtered_page). A sample: ~1 s at 1M rows.
        dst.cursor().execute("ANALYZE completions")
    return result


def _offset(src: Store, dst: Store, batch_size: int, append: bool) -> int:
    """What this run adds to each copied ``seq``: 0 into a destination that is empty or holds only
    the source's rows at the source's numbers (a rerun); past the destination's largest number
    when it holds captures of its own and ``append`` is set; refused without ``append``."""
    held, top = dst.cursor().execute("SELECT count(*), coalesce(max(seq), 0) FROM completions").fetchone()
    if not held or not _has_own_rows(src, dst, batch_size):
        return 0
    if not append:
        raise DestinationHasOwnRows(int(held))
    first = src.cursor().execute("SELECT min(seq) FROM completions").fetchone()[0]
    return max(0, int(top) - int(first if first is not None else 1) + 1)


def _has_own_rows(src: Store, dst: Store, batch_size: int) -> bool:
    """Whether ``dst`` holds a completion that is not ``src``'s at ``src``'s ``seq``: read in
    ``seq`` ranges, each range's ids looked up in ``src`` at once; stops at the first one."""
    cur = dst.cursor()
    lo, top = (int(v) for v in cur.execute("SELECT min(seq), max(seq) FROM completions").fetchone())
    while lo <= top:
        rows = cur.execute(
            "SELECT id, seq FROM completions WHERE seq >= ? AND seq < ?", [lo, lo + batch_size]
        ).fetchall()
        if rows:
            theirs = src.cursor().execute(
                f"SELECT id, seq FROM completions WHERE {src.dialect.in_list('id')}", [[r[0] for r in rows]]
            ).fetchall()
            if {(r[0], int(r[1])) for r in rows} - {(r[0], int(r[1])) for r in theirs}:
                return True
            lo += batch_size
            continue
        nxt = cur.execute("SELECT min(seq) FROM completions WHERE seq >= ?", [lo + batch_size]).fetchone()[0]
        if nxt is None:
            break
        lo = int(nxt)  # a gap in the numbers is jumped over
    return False


def _copy_routes_version(src: Store, dst: Store) -> None:
    """The route table's change counter only moves forward: the destination takes the larger."""
    row = src.cursor().execute("SELECT value FROM auto_meta WHERE key = 'routes_version'").fetchone()
    if row is not None:
        dst.cursor().execute(
            "UPDATE auto_meta SET value = ? WHERE key = 'routes_version' AND value < ?", [int(row[0]), int(row[0])]
        )


def _existing_ids(dst: Store, ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Which of ``ids`` ``dst`` holds already (one query, the ids bound as one list)."""
    rows = dst.cursor().execute(
        f"SELECT id FROM completions WHERE {dst.dialect.in_list('id')}", [ids.to_pylist()]
    ).fetchall()
    return pa.array([r[0] for r in rows], pa.string())


def _read_completions(src: Store, lo: int, hi: int) -> pa.Table:
    """Source completions with ``lo <= seq < hi`` as one Arrow table (DuckDB hands its result to
    Arrow in C++; a PostgreSQL source's rows are turned into columns)."""
    sql = f"SELECT {_COLS} FROM completions WHERE seq >= ? AND seq < ? ORDER BY seq"
    cur = src.cursor()
    if src.dialect.name != "postgresql":
        return cur.sql(sql, params=[lo, hi]).to_arrow_table().cast(SCHEMA)
    rows = cur.execute(sql, [lo, hi]).fetchall()
    cols = list(zip(*rows)) if rows else [()] * len(COLUMNS)
    return pa.Table.from_arrays([pa.array(col, typ) for col, typ in zip(cols, COLUMNS.values())], schema=SCHEMA)


def _completion_batches(src: Store, batch_size: int) -> Iterator[tuple[int, int, pa.Table]]:
    """The source's completions in ``seq`` ranges of ``batch_size`` numbers: each range reads only
    its own row groups (DuckDB's zone maps) or index range (PostgreSQL), where ``seq > last ORDER
    BY seq LIMIT n`` would scan or sort the whole rest of the table on every batch. A gap in the
    numbers is jumped over."""
    cur = src.cursor()
    first, top = cur.execute("SELECT min(seq), max(seq) FROM completions").fetchone()
    if first is None:
        return
    lo, top = int(first), int(top)
    while lo <= top:
        hi = lo + batch_size
        table = _read_completions(src, lo, hi)
        if table.num_rows:
            yield lo, hi, table
            lo = hi
            continue
        nxt = cur.execute("SELECT min(seq) FROM completions WHERE seq >= ?", [hi]).fetchone()[0]
        if nxt is None:
            return
        lo = int(nxt)


def _copy_completions(
    src: Store, dst: Store, batch_size: int, result: CopyResult, progress: Any, streams: int | None = None,
    offset: int = 0, renumbered: bool = False,
) -> None:
    # Each batch is written (in ``streams`` parts, one COPY each on PostgreSQL, in parallel: the
    # server parses and indexes each part on its own core) while the next one is read, and the
    # progress callback runs once the whole batch is in; an interruption (a signal, ^C, a lost
    # connection) leaves whole parts behind. The rerun asks the destination which ids it has, but
    # only for a batch whose seq range meets the seqs the destination held when the copy started
    # (an empty destination, the first run, asks nothing); when copying renumbers (``append``) an
    # earlier run's rows may lie at any number, so every batch asks.
    if streams is None:
        streams = 4 if dst.dialect.name == "postgresql" else 1  # DuckDB: one writer per file
    copied = skipped = 0
    held = dst.cursor().execute("SELECT min(seq), max(seq) FROM completions").fetchone()
    with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="protege-copy") as pool:
        pending: tuple[int, list[Future[int]]] | None = None

        def finish() -> None:
            nonlocal copied, skipped
            if pending is None:
                return
            n, parts = pending
            wait(parts)
            done = sum(f.result() for f in parts)
            copied += done
            skipped += n - done
            if progress:
                progress("completions", n)

        for lo, hi, table in _completion_batches(src, batch_size):
            n = table.num_rows
            if held[0] is not None and (renumbered or (lo <= int(held[1]) and hi > int(held[0]))):
                have = _existing_ids(dst, table.column("id"))
                if len(have):
                    table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=have)))
            if offset:
                at = table.schema.get_field_index("seq")
                table = table.set_column(at, "seq", pc.add(table.column("seq"), pa.scalar(offset, pa.int64())))
            finish()
            step = max(1, -(-table.num_rows // streams))
            parts = [pool.submit(insert_table, dst, table.slice(i, step)) for i in range(0, table.num_rows, step)]
            pending = (n, parts)
        finish()
    result.copied["completions"], result.skipped["completions"] = copied, skipped


def _copy_table(
    src: Store, dst: Store, table: str, key: tuple[str, ...], batch_size: int, result: CopyResult, progress: Any,
    offset: int = 0, renumbered: bool = False,
) -> None:
    cols = _columns(dst, table)
    if not cols:  # not in this schema version
        return
    names = [n for n, _ in cols]
    schema = pa.schema(cols)
    copied = skipped = 0
    cur = src.cursor()
    cur.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY {', '.join(key)}")
    value = {n: f"b.{n}" for n in names}  # what each column is written as
    source = "_protege_copy_batch b"
    if renumbered and table in SEQ_REFS:
        col, by_id = SEQ_REFS[table]
        value[col] = f"coalesce(c.seq, b.{col})"
        source += f" LEFT JOIN completions c ON c.id = b.{by_id}"
    if offset:
        for col in WATERMARKS.get(table, ()):
            value[col] = f"CASE WHEN b.{col} > 0 THEN b.{col} + {int(offset)} ELSE b.{col} END"
    match = " AND ".join(f"t.{k} = {value[k]}" for k in key)
    while rows := cur.fetchmany(batch_size):
        batch = pa.Table.from_arrays([pa.array(col, typ) for col, (_, typ) in zip(zip(*rows), cols)], schema=schema)
        out = dst.cursor()
        with registered(out, "_protege_copy_batch", batch), transaction(out):
            before = int(out.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            out.execute(
                f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(value[n] for n in names)} "
                f"FROM {source} WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {match})"
            )
            n = int(out.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) - before
        copied += n
        skipped += len(rows) - n
        if progress:
            progress(table, len(rows))
    result.copied[table], result.skipped[table] = copied, skipped


__all__ = ["TABLES", "CopyResult", "DestinationHasOwnRows", "copy_store"]
