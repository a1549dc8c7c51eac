"""Captured completions: bulk insert, and the queries behind OpenAI's Stored Completions API.

A *record* is a plain dict with the columns of :data:`COLUMNS`; the capture writer, the JSONL
import and the spool all produce records, and :func:`insert_records` writes them in one Arrow bulk
insert (row-at-a-time inserts into DuckDB are ~100x slower).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence, TypedDict

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlmodel import Field, SQLModel

from .db import Store, transaction
from .dialect import DUCKDB, Dialect
from .pg import jsonb_safe

if TYPE_CHECKING:
    from typing_extensions import Unpack

# Column name -> Arrow type, in table order.
COLUMNS: dict[str, pa.DataType] = {
    "seq": pa.int64(),
    "id": pa.string(),
    "created": pa.int64(),
    "started_at": pa.float64(),
    "finished_at": pa.float64(),
    "model_requested": pa.string(),
    "model": pa.string(),
    "request": pa.string(),
    "response": pa.string(),
    "metadata": pa.string(),
    "store": pa.bool_(),
    "status_code": pa.int32(),
    "outcome": pa.string(),
    "error": pa.string(),
    "latency_ms": pa.float64(),
    "ttft_ms": pa.float64(),
    "prompt_tokens": pa.int32(),
    "completion_tokens": pa.int32(),
    "total_tokens": pa.int32(),
    "finish_reason": pa.string(),
    "stream": pa.bool_(),
    "upstream": pa.string(),
    "key_hash": pa.string(),
    "request_id": pa.string(),
    "source": pa.string(),
    "served_by": pa.string(),
    # For a second answer to the same request (shadow student, or teacher sampled to check a
    # canary): the id of the capture whose answer the client got.
    "paired_with": pa.string(),
    # The id the upstream (or the imported line) gave this completion; ``id`` is Protege's own,
    # unique (see store/ids.py and migration 5).
    "upstream_id": pa.string(),
}
SCHEMA = pa.schema(list(COLUMNS.items()))
_COLS = ", ".join(COLUMNS)
_TYPES = list(COLUMNS.items())[1:]  # every column but seq

# Outcomes a capture can have. Only "ok" captures are chat completions the Stored API returns.
OUTCOMES = ("ok", "upstream_error", "unreachable", "timeout", "client_disconnected", "invalid_response")


class Completion(SQLModel, table=True):
    """ORM view of a captured completion (JSON columns are text)."""

    __tablename__ = "completions"

    seq: int = Field(primary_key=True)
    id: str
    created: int
    started_at: float
    finished_at: float | None = None
    model_requested: str | None = None
    model: str | None = None
    request: str
    response: str | None = None
    metadata_: str = Field(default="{}", sa_column_kwargs={"name": "metadata"})
    store: bool | None = None
    status_code: int | None = None
    outcome: str = "ok"
    error: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    finish_reason: str | None = None
    stream: bool = False
    upstream: str | None = None
    key_hash: str | None = None
    request_id: str | None = None
    source: str = "proxy"
    served_by: str | None = None
    paired_with: str | None = None
    upstream_id: str | None = None


def record_from_completion(
    response: dict[str, Any],
    request: dict[str, Any] | None = None,
    *,
    metadata: dict[str, str] | None = None,
    source: str = "import",
    **extra: Any,
) -> dict[str, Any]:
    """A record for a finished ``chat.completion`` (used by import and by local students)."""
    usage = response.get("usage") or {}
    choices = response.get("choices") or [{}]
    created = int(response.get("created") or time.time())
    if request is None:
        request = {"model": response.get("model"), "messages": response.get("messages") or []}
    md = metadata if metadata is not None else (response.get("metadata") or request.get("metadata") or {})
    rec = {
        "id": response.get("id") or extra.pop("id", None),
        "created": created,
        "started_at": float(extra.pop("started_at", created)),
        "finished_at": extra.pop("finished_at", None),
        "model_requested": request.get("model"),
        "model": response.get("model"),
        "request": orjson.dumps(request).decode(),
        "response": orjson.dumps(response).decode(),
        "metadata": orjson.dumps(md or {}).decode(),
        "store": request.get("store"),
        "status_code": 200,
        "outcome": "ok",
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "finish_reason": choices[0].get("finish_reason") if choices else None,
        "stream": False,
        "source": source,
    }
    rec.update(extra)
    return rec


# Metadata filters read ``meta_pairs``: per row, each pair the JSON text '["key","value"]'
# (unambiguous whatever the key or value holds). It is derived from the ``metadata`` JSON by DuckDB
# itself, in the same statement as the insert: vectorised C++ that runs without the GIL, where
# building it in Python cost ~5 us a record (a quarter of the import's time). The filter side
# encodes its pairs with the same SQL function, so the two encodings cannot drift apart. (The
# one-row-per-pair copy, ``completion_metadata``, was retired by migration 7.)
_MD_MAP = """json_transform({col}, '"MAP(VARCHAR, VARCHAR)"')"""
# The DuckDB SQL that derives ``meta_pairs`` from a metadata column ({col}): the insert, the
# metadata update and bulk loaders (bench/) derive it the same way.
META_PAIRS = "list_transform(map_entries(" + _MD_MAP + "), lambda e: json_array(e.key, e.value)::VARCHAR)"
PAIR_SQL = "json_array(?, ?)::VARCHAR"  # one pair for list_contains(meta_pairs, ...), two bound parameters


def insert_records(store: Store, records: Sequence[dict[str, Any]], cursor: Any = None) -> int:
    """Insert records in one statement (one transaction). Returns the number written.

    The Arrow table is built column by column (``pa.array`` per column is ~3x faster than
    ``Table.from_pylist``), which is what lets the capture writer and the import keep up.
    A record that already has a ``seq`` keeps it: the capture writer numbers captures when it
    journals them, so that a reload after a crash can tell which are already in the table.
    """
    if not records:
        return 0
    fresh = [rec for rec in records if rec.get("seq") is None]
    for rec, seq in zip(fresh, store.next_seqs(len(fresh))):
        rec["seq"] = seq
    seqs = [rec["seq"] for rec in records]
    dumps = orjson.dumps
    for rec in records:
        md = rec.get("metadata")
        if md is None:
            rec["metadata"] = "{}"
        elif not isinstance(md, str):
            rec["metadata"] = dumps(md).decode()
    if store.dialect.name == "postgresql":
        # COPY straight into the table: one round trip, one transaction, no temporary table
        # (metadata text is parsed into jsonb by the server; no meta_pairs on PostgreSQL).
        cur = cursor or store.cursor()
        names = list(COLUMNS)
        for rec in records:
            rec["metadata"] = jsonb_safe(rec["metadata"])
        cur.copy_rows("completions", names, ([rec.get(name) for name in names] for rec in records))
        return len(records)
    arrays = [pa.array(seqs, pa.int64())]
    for name, typ in _TYPES:
        arrays.append(pa.array([rec.get(name) for rec in records], type=typ))
    _insert_duckdb(cursor or store.cursor(), pa.Table.from_arrays(arrays, schema=SCHEMA))
    return len(records)


def _insert_duckdb(cur: Any, table: pa.Table) -> None:
    """One Arrow table of completions into DuckDB, ``meta_pairs`` derived in the same statement."""
    cur.register("_protege_batch", table)
    try:
        cur.execute("BEGIN TRANSACTION")
        cur.execute(
            f"INSERT INTO completions ({_COLS}, meta_pairs) "
            f"SELECT {_COLS}, CASE WHEN metadata = '{{}}' THEN NULL ELSE {META_PAIRS.format(col='metadata')} END "
            "FROM _protege_batch"
        )
        cur.execute("COMMIT")
    except Exception:
        try:
            cur.execute("ROLLBACK")
        except Exception:
            pass
        raise
    finally:
        cur.unregister("_protege_batch")


def insert_table(store: Store, table: pa.Table) -> int:
    """Insert an Arrow table of completions (every column of :data:`SCHEMA`, ``seq`` included) in
    one transaction: the bulk path of ``store copy``, with no Python object per row.

    On PostgreSQL the table is written as CSV by Arrow (C++) and sent with one ``COPY ... (FORMAT
    csv)``: Arrow quotes every string and leaves a null unquoted, which is exactly how PostgreSQL's
    CSV tells an empty string from NULL. Metadata holding an escaped NUL is made ``jsonb``-safe
    (those rows only, see :func:`~protege.store.pg.jsonb_safe`)."""
    if table.num_rows == 0:
        return 0
    table = table.select(list(COLUMNS)).cast(SCHEMA)
    if store.dialect.name != "postgresql":
        _insert_duckdb(store.cursor(), table)
        return table.num_rows
    md = pc.fill_null(table.column("metadata"), "{}")  # NOT NULL on PostgreSQL
    if pc.any(pc.match_substring(md, "\\u0000")).as_py():
        md = pa.array([jsonb_safe(v) for v in md.to_pylist()], pa.string())
    table = table.set_column(table.schema.get_field_index("metadata"), "metadata", md)
    buf = io.BytesIO()
    pa_csv.write_csv(table, buf, pa_csv.WriteOptions(include_header=False, batch_size=8192))
    with store.cursor().connection.cursor() as cur, cur.copy(f"COPY completions ({_COLS}) FROM STDIN (FORMAT csv)") as copy:
        copy.write(buf.getbuffer())
    return table.num_rows


# ---------------------------------------------------------------------------------------------
# Queries behind the Stored Completions API


@dataclass
class Page:
    data: list[dict[str, Any]]
    has_more: bool


# "Teacher traffic": answers the teacher gave to real requests, the only captures a student may
# learn from or be judged against. A capture is NOT teacher traffic when it is
# - a second answer (``source = 'shadow'``): a shadow student's, or the teacher's sampled behind a
#   student, captured after the client already had its answer (``paired_with`` names that one);
# - served by a student (``served_by = 'student'``): canary/full routes answer through the proxy
#   with ``source = 'proxy'``, so ``source = 'proxy'`` alone would let a student train on itself.
# Imported completions (``source = 'import'``) ARE teacher traffic: they are the history a user
# brings to build a first dataset, and the dataset builder has always used them; counting them
# for the automatic trigger keeps "new eligible" equal to what the next dataset gains.
TEACHER_TRAFFIC = "{a}source <> 'shadow' AND coalesce({a}served_by, 'teacher') = 'teacher'"


def completion_filter(
    *,
    model: str | None = None,
    models: Sequence[str] | None = None,
    metadata: dict[str, str] | None = None,
    since: float | None = None,
    until: float | None = None,
    outcome: str | None = None,
    stored_only: bool = False,
    teacher_only: bool = False,
    live_only: bool = False,
    first_answers_only: bool = False,
    after_seq: int | None = None,
    alias: str = "c",
    dialect: Dialect = DUCKDB,
) -> tuple[str, list[Any]]:
    """A WHERE fragment over ``completions`` (aliased ``alias``) and its bound parameters: the one
    definition of "which completions" for the Stored API, exports, evals, datasets and auto.

    Named flags:

    - ``stored_only``: successful chat completions with a response (what the Stored API returns);
    - ``teacher_only``: teacher traffic, students and shadows excluded (see :data:`TEACHER_TRAFFIC`);
    - ``live_only``: answers the proxy gave its clients (``source = 'proxy'``: no imports, no
      shadows), whoever served them;
    - ``first_answers_only``: no second answers (``source <> 'shadow'``);
    - ``model`` (response or requested model), ``models`` (any of them; empty means no filter),
      ``metadata`` (every pair), ``since``/``until``, ``outcome``, ``after_seq`` (captured after).

    Metadata filters: each pair is ``list_contains(meta_pairs, '["k","v"]')``, a test on the row
    itself. Measured at 1M rows (bench/bench_store.py): with the pairs in a side table, a semi-join
    has to build the whole matching set before ordering, 50-250 ms for a common pair such as
    ``env=prod``; on the row, DuckDB's top-N pushes its running bound down to the scan and skips
    row groups by their ``created`` zone maps, so a page costs ~10 ms, ~40 ms for a rare pair
    (a full scan of one list column). Values are always bound parameters, never SQL text.
    ``since`` is inclusive and ``until`` exclusive, in Unix seconds on ``created``.

    ``dialect`` is the store's (``store.dialect``): on PostgreSQL a metadata pair is
    ``metadata @> '{"k": "v"}'`` on the jsonb column, which its GIN index serves.
    """
    a = f"{alias}." if alias else ""
    where: list[str] = []
    params: list[Any] = []
    if stored_only:
        where += [f"{a}outcome = 'ok'", f"{a}response IS NOT NULL"]
    if outcome:
        where.append(f"{a}outcome = ?")
        params.append(outcome)
    if teacher_only:
        where.append(TEACHER_TRAFFIC.format(a=a))
    if live_only:
        where.append(f"{a}source = 'proxy'")
    if first_answers_only:
        where.append(f"{a}source <> 'shadow'")
    if after_seq is not None:
        where.append(f"{a}seq > ?")
        params.append(int(after_seq))
    if model:
        where.append(f"({a}model = ? OR {a}model_requested = ?)")
        params += [model, model]
    if models:
        where.append(f"({dialect.in_list(a + 'model')} OR {dialect.in_list(a + 'model_requested')})")
        params += [list(models), list(models)]
    for key, value in (metadata or {}).items():
        sql, bound = dialect.metadata_has(a, str(key), str(value))
        where.append(sql)
        params += bound
    if since is not None:
        where.append(f"{a}created >= ?")
        params.append(int(since))
    if until is not None:
        where.append(f"{a}created < ?")
        params.append(int(until))
    return (" AND ".join(where) or "TRUE"), params


def _stored_filter(store: Store, model: str | None, metadata: dict[str, str] | None) -> tuple[str, list[Any]]:
    return completion_filter(model=model, metadata=metadata, stored_only=True, dialect=store.dialect)


def _by_id(columns: str, where: str = "TRUE") -> str:
    """SQL for the capture with a given id (one ``?``; ids are unique since migration 5).

    The id lookup is materialised first: only a bare ``id = ?`` scan uses the ART index (~1 ms at
    1M rows); with ORDER BY/LIMIT or other filters in the same scan DuckDB reads the whole id column
    (~25 ms at 1M rows, measured).
    """
    return (
        f"WITH t AS MATERIALIZED (SELECT * FROM completions WHERE id = ?) "
        f"SELECT {columns} FROM t WHERE {where} ORDER BY seq DESC LIMIT 1"
    )


def _locate(cur: Any, completion_id: str) -> tuple[int, int] | None:
    row = cur.execute(
        _by_id("created, seq"), [completion_id]
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def list_stored(
    store: Store,
    *,
    model: str | None = None,
    metadata: dict[str, str] | None = None,
    after: str | None = None,
    limit: int = 20,
    order: str = "asc",
) -> Page:
    """A page of stored completions ordered by creation time (then capture order)."""
    cur = store.cursor()
    where, params = _stored_filter(store, model, metadata)
    direction = "DESC" if order == "desc" else "ASC"
    if after:
        pos = _locate(cur, after)
        if pos is not None:
            cmp = "<" if order == "desc" else ">"
            # `created >=` first so the scan can skip row groups by zone map.
            where += f" AND c.created {cmp}= ? AND (c.created {cmp} ? OR c.seq {cmp} ?)"
            params += [pos[0], pos[0], pos[1]]
    sql = (
        f"SELECT c.response, c.request, c.metadata, c.id, c.request_id FROM completions c WHERE {where} "
        f"ORDER BY c.created {direction}, c.seq {direction} LIMIT ?"
    )
    if store.dialect.name == "postgresql" and metadata:
        rows = _pg_filtered_page(cur, sql, params + [limit + 1])
    else:
        rows = cur.execute(sql, params + [limit + 1]).fetchall()
    has_more = len(rows) > limit
    return Page([stored_object(*r) for r in rows[:limit]], has_more)


# How long the planner's own plan for a page of a metadata-filtered list may run before the other
# plan is tried (ms).
PG_PLAN_MS = 40

# Planner settings that force each of the two plans (the same SQL).
_WALK = ("enable_bitmapscan", "enable_seqscan", "enable_sort")  # the (created, seq) index, in order
_GIN = ("enable_indexscan", "enable_seqscan")  # the GIN bitmap, then a sort of the matches


def _pg_filtered_page(cur: Any, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """A page of a metadata-filtered list on PostgreSQL, fast whether the pair is common or rare.

    There are two plans, each slow in the other's case: walking the (created, seq) index and
    testing each row's metadata stops after a page when the pair is common, but reads the whole
    table for a rare one; the GIN index finds a rare pair's few rows at once, but for a common one
    fetches and sorts every match (100,000 rows for a pair on 10 % of 1M). After ANALYZE the planner
    mostly picks the right one (it tests ``@>`` on its sample), but ``jsonb`` containment is an
    estimate, and a wrong pick costs a scan of the table. So the planner's plan runs for at most
    :data:`PG_PLAN_MS`; if it has not finished, the other plan (forced) answers."""
    import psycopg

    plan = "\n".join(str(r[0]) for r in cur.execute("EXPLAIN " + sql, params).fetchall())
    other = _WALK if "completions_metadata" in plan else _GIN
    for settings, timeout in (((), PG_PLAN_MS), (other, 0)):
        cur.execute("BEGIN TRANSACTION")
        try:
            for name in settings:
                cur.execute(f"SET LOCAL {name} = off")
            cur.execute(f"SET LOCAL statement_timeout = {int(timeout)}")
            rows = cur.execute(sql, params).fetchall()
            cur.execute("COMMIT")
            return rows
        except psycopg.errors.QueryCanceled:
            cur.execute("ROLLBACK")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
    raise AssertionError("unreachable: the second plan runs without a time limit")


def stored_object(response: str, request: str, metadata: str, completion_id: str, request_id: str | None = None) -> dict[str, Any]:
    """The Stored Completions API's object: the chat.completion plus the request's parameters."""
    obj = orjson.loads(response)
    req = orjson.loads(request)
    obj["id"] = completion_id
    obj.setdefault("object", "chat.completion")
    obj["metadata"] = orjson.loads(metadata)
    obj["request_id"] = request_id
    for key in ("seed", "top_p", "temperature", "presence_penalty", "frequency_penalty", "tools", "tool_choice", "response_format"):
        obj.setdefault(key, req.get(key))
    obj.setdefault("input_user", req.get("user"))
    return obj


def get_stored(store: Store, completion_id: str) -> dict[str, Any] | None:
    row = store.cursor().execute(
        _by_id("response, request, metadata, id, request_id", "outcome = 'ok' AND response IS NOT NULL"),
        [completion_id],
    ).fetchone()
    return stored_object(*row) if row else None


def get_record(store: Store, completion_id: str) -> dict[str, Any] | None:
    """Every captured column of one completion (errors included), for the CLI and internal use."""
    cur = store.cursor()
    cur.execute(_by_id(_COLS), [completion_id])
    row = cur.fetchone()
    return dict(zip(COLUMNS, row)) if row else None


def update_metadata(store: Store, completion_id: str, metadata: dict[str, str] | None) -> dict[str, Any] | None:
    """Replace a stored completion's metadata (OpenAI: "update the metadata field")."""
    cur = store.cursor()
    pos = _locate(cur, completion_id)
    if pos is None:
        return None
    seq = pos[1]
    md = orjson.dumps({str(k): str(v) for k, v in (metadata or {}).items()}).decode()
    if store.dialect.name == "postgresql":  # jsonb: the GIN index follows the column
        cur.execute("UPDATE completions SET metadata = ?::jsonb WHERE seq = ?", [jsonb_safe(md), seq])
        return get_stored(store, completion_id)
    with transaction(cur):
        cur.execute(
            f"UPDATE completions SET metadata = ?, meta_pairs = CASE WHEN ? = '{{}}' THEN NULL ELSE {META_PAIRS.format(col='?')} END "
            "WHERE seq = ?",
            [md, md, md, seq],
        )
    return get_stored(store, completion_id)


def delete_completion(store: Store, completion_id: str) -> bool:
    """Delete the one capture with this id (by its ``seq``: exactly one row, whatever else matches)."""
    cur = store.cursor()
    pos = _locate(cur, completion_id)
    if pos is None:
        return False
    seq = pos[1]
    cur.execute("DELETE FROM completions WHERE seq = ?", [seq])
    return True


def input_messages(store: Store, completion_id: str) -> list[dict[str, Any]] | None:
    """The request's messages with OpenAI's message ids (``<completion_id>-<index>``)."""
    row = store.cursor().execute(
        _by_id("request", "outcome = 'ok'"), [completion_id]
    ).fetchone()
    if row is None:
        return None
    messages = orjson.loads(row[0]).get("messages") or []
    out = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        parts = None
        if isinstance(content, list):
            parts = content
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text") or None
        out.append(
            {
                "id": f"{completion_id}-{i}",
                "role": msg.get("role"),
                "content": content,
                "name": msg.get("name"),
                "content_parts": parts,
                "tool_calls": msg.get("tool_calls"),
                "tool_call_id": msg.get("tool_call_id"),
                "refusal": msg.get("refusal"),
            }
        )
    return out


def count(store: Store) -> int:
    return int(store.cursor().execute("SELECT count(*) FROM completions").fetchone()[0])


def iter_records(store: Store, where: str = "TRUE", params: Iterable[Any] = ()) -> Iterable[dict[str, Any]]:
    """Records in capture order. ``where`` is a fixed SQL fragment from code, never from input."""
    cur = store.cursor()
    cur.execute(f"SELECT {_COLS} FROM completions WHERE {where} ORDER BY seq", list(params))
    yield from _stream_records(cur)


def _stream_records(cur: Any, batch: int = 5000) -> Iterable[dict[str, Any]]:
    """Rows of an executed ``SELECT {_COLS} ...`` as records, a batch at a time."""
    while True:
        rows = cur.fetchmany(batch)
        if not rows:
            return
        for row in rows:
            yield dict(zip(COLUMNS, row))


class Window(TypedDict, total=False):
    """The filters every reader of captures takes by keyword (see :func:`completion_filter`):
    ``model``, ``metadata`` pairs, ``since`` (inclusive) and ``until`` (exclusive)."""

    model: str | None
    metadata: dict[str, str] | None
    since: float | None
    until: float | None


class RecordFilters(Window, total=False):
    """:class:`Window` plus ``outcome`` and ``stored_only``: the filters of the record readers."""

    outcome: str | None
    stored_only: bool


def ordered_select(
    store: Store, columns: str, *, order: str = "asc", limit: int | None = None, alias: str = "c", **filters: Any
) -> tuple[str, list[Any]]:
    """``SELECT columns FROM completions`` where :func:`completion_filter` (``filters``) holds, by
    creation time then capture order (``order``: ``"asc"`` or ``"desc"``), at most ``limit`` rows:
    the SQL and its parameters, for the store's readers that stream or copy a filtered range."""
    where, params = completion_filter(alias=alias, dialect=store.dialect, **filters)
    direction = "DESC" if order == "desc" else "ASC"
    a = f"{alias}." if alias else ""
    sql = (
        f"SELECT {columns} FROM completions {alias} WHERE {where} "
        f"ORDER BY {a}created {direction}, {a}seq {direction}"
    )
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return sql, params


def select_records(
    store: Store, *, limit: int | None = None, order: str = "asc", **filters: Unpack[RecordFilters]
) -> Iterable[dict[str, Any]]:
    """Records (every column) matching the filters, by creation time then capture order; streamed."""
    sql, params = ordered_select(store, _COLS, order=order, limit=limit, **filters)
    cur = store.cursor()
    cur.execute(sql, params)
    yield from _stream_records(cur, 2000)


def count_records(store: Store, **filters: Unpack[RecordFilters]) -> int:
    where, params = completion_filter(dialect=store.dialect, **filters)
    return int(store.cursor().execute(f"SELECT count(*) FROM completions c WHERE {where}", params).fetchone()[0])
