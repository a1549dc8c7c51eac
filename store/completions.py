"""Captured completions: bulk insert, and the queries behind OpenAI's Stored Completions API.

A *record* is a plain dict with the columns of :data:`COLUMNS`; the capture writer, the JSONL
import and the spool all produce records, and :func:`insert_records` writes them in one Arrow bulk
insert (row-at-a-time inserts into DuckDB are ~100x slower).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import orjson
import pyarrow as pa
from sqlmodel import Field, SQLModel

from .db import Store

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
}
SCHEMA = pa.schema(list(COLUMNS.items()))
META_SCHEMA = pa.schema([("seq", pa.int64()), ("key", pa.string()), ("value", pa.string())])
_COLS = ", ".join(COLUMNS)

# Outcomes a capture can have. Only "ok" captures are chat completions the Stored API returns.
OUTCOMES = ("ok", "upstream_error", "unreachable", "timeout", "client_disconnected")


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


def insert_records(store: Store, records: Sequence[dict[str, Any]], cursor: Any = None) -> int:
    """Insert records (and their metadata rows) in one transaction. Returns the number written."""
    if not records:
        return 0
    seqs = store.next_seqs(len(records))
    meta_seq: list[int] = []
    meta_key: list[str] = []
    meta_val: list[str] = []
    for rec, seq in zip(records, seqs):
        rec["seq"] = seq
        md = rec.get("metadata") or "{}"
        if not isinstance(md, str):
            rec["metadata"] = md = orjson.dumps(md).decode()
        if md != "{}":
            for k, v in orjson.loads(md).items():
                meta_seq.append(seq)
                meta_key.append(k)
                meta_val.append(str(v))
    table = pa.Table.from_pylist(list(records), schema=SCHEMA)
    meta = pa.table({"seq": meta_seq, "key": meta_key, "value": meta_val}, schema=META_SCHEMA)
    cur = cursor or store.cursor()
    cur.register("_protege_batch", table)
    cur.register("_protege_meta", meta)
    try:
        cur.execute("BEGIN TRANSACTION")
        cur.execute(f"INSERT INTO completions ({_COLS}) SELECT {_COLS} FROM _protege_batch")
        if meta_seq:
            cur.execute("INSERT INTO completion_metadata SELECT seq, key, value FROM _protege_meta")
        cur.execute("COMMIT")
    except Exception:
        try:
            cur.execute("ROLLBACK")
        except Exception:
            pass
        raise
    finally:
        cur.unregister("_protege_batch")
        cur.unregister("_protege_meta")
    return len(records)


# ---------------------------------------------------------------------------------------------
# Queries behind the Stored Completions API


@dataclass
class Page:
    data: list[dict[str, Any]]
    has_more: bool


def _stored_filter(model: str | None, metadata: dict[str, str] | None) -> tuple[str, list[Any]]:
    where = ["c.outcome = 'ok'", "c.response IS NOT NULL"]
    params: list[Any] = []
    if model:
        where.append("(c.model = ? OR c.model_requested = ?)")
        params += [model, model]
    for key, value in (metadata or {}).items():
        where.append("c.seq IN (SELECT seq FROM completion_metadata WHERE key = ? AND value = ?)")
        params += [key, value]
    return " AND ".join(where), params


def _locate(cur: Any, completion_id: str) -> tuple[int, int] | None:
    row = cur.execute(
        "SELECT created, seq FROM completions WHERE id = ? ORDER BY seq DESC LIMIT 1", [completion_id]
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
    where, params = _stored_filter(model, metadata)
    direction = "DESC" if order == "desc" else "ASC"
    if after:
        pos = _locate(cur, after)
        if pos is not None:
            cmp = "<" if order == "desc" else ">"
            where += f" AND (c.created {cmp} ? OR (c.created = ? AND c.seq {cmp} ?))"
            params += [pos[0], pos[0], pos[1]]
    sql = (
        f"SELECT c.response, c.request, c.metadata, c.id, c.request_id FROM completions c WHERE {where} "
        f"ORDER BY c.created {direction}, c.seq {direction} LIMIT ?"
    )
    rows = cur.execute(sql, params + [limit + 1]).fetchall()
    has_more = len(rows) > limit
    return Page([stored_object(*r) for r in rows[:limit]], has_more)


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
        "SELECT response, request, metadata, id, request_id FROM completions "
        "WHERE id = ? AND outcome = 'ok' AND response IS NOT NULL ORDER BY seq DESC LIMIT 1",
        [completion_id],
    ).fetchone()
    return stored_object(*row) if row else None


def get_record(store: Store, completion_id: str) -> dict[str, Any] | None:
    """Every captured column of one completion (errors included), for the CLI and internal use."""
    cur = store.cursor()
    cur.execute(f"SELECT {_COLS} FROM completions WHERE id = ? ORDER BY seq DESC LIMIT 1", [completion_id])
    row = cur.fetchone()
    return dict(zip(COLUMNS, row)) if row else None


def update_metadata(store: Store, completion_id: str, metadata: dict[str, str] | None) -> dict[str, Any] | None:
    """Replace a stored completion's metadata (OpenAI: "update the metadata field")."""
    cur = store.cursor()
    pos = _locate(cur, completion_id)
    if pos is None:
        return None
    seq = pos[1]
    md = metadata or {}
    cur.execute("BEGIN TRANSACTION")
    try:
        cur.execute("UPDATE completions SET metadata = ? WHERE seq = ?", [orjson.dumps(md).decode(), seq])
        cur.execute("DELETE FROM completion_metadata WHERE seq = ?", [seq])
        if md:
            cur.executemany("INSERT INTO completion_metadata VALUES (?, ?, ?)", [[seq, k, v] for k, v in md.items()])
        cur.execute("COMMIT")
    except Exception:
        cur.execute("ROLLBACK")
        raise
    return get_stored(store, completion_id)


def delete_completion(store: Store, completion_id: str) -> bool:
    cur = store.cursor()
    seqs = [r[0] for r in cur.execute("SELECT seq FROM completions WHERE id = ?", [completion_id]).fetchall()]
    if not seqs:
        return False
    cur.execute("BEGIN TRANSACTION")
    cur.execute("DELETE FROM completion_metadata WHERE seq IN (SELECT unnest(?))", [seqs])
    cur.execute("DELETE FROM completions WHERE id = ?", [completion_id])
    cur.execute("COMMIT")
    return True


def input_messages(store: Store, completion_id: str) -> list[dict[str, Any]] | None:
    """The request's messages with OpenAI's message ids (``<completion_id>-<index>``)."""
    row = store.cursor().execute(
        "SELECT request FROM completions WHERE id = ? AND outcome = 'ok' ORDER BY seq DESC LIMIT 1", [completion_id]
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
    while True:
        rows = cur.fetchmany(5000)
        if not rows:
            return
        for row in rows:
            yield dict(zip(COLUMNS, row))
