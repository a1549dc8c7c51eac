"""Store tables and queries for eval runs: the run, its frozen items, generated outputs, item scores.

Items are copied into the run when it is created, so a rerun (resume) or a report months later sees
exactly what was evaluated even if the captured completions are deleted. Outputs are written one by
one as they arrive (upserts keyed by item and candidate), which is what makes a run resumable: the
set of missing (item, candidate) pairs is a query. JSON columns are text (orjson). Every statement
uses bound parameters.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import orjson
import pyarrow as pa
from sqlmodel import Field, SQLModel

from .completions import Window, ordered_select
from .db import Store, registered, transaction

if TYPE_CHECKING:
    from typing_extensions import Unpack

RUN_STATUSES = ("queued", "in_progress", "completed", "failed", "canceled")


class EvalRun(SQLModel, table=True):
    __tablename__ = "eval_runs"

    id: str = Field(primary_key=True)
    created_at: int
    name: str | None = None
    status: str = "queued"
    spec: str = "{}"  # the run spec (candidates carry env var NAMES for keys, never keys)
    n_items: int = 0
    n_candidates: int = 0
    started_at: int | None = None
    completed_at: int | None = None
    error: str | None = None  # {"code","message"} as JSON
    results: str | None = None  # cached statistics (JSON) computed when generation finished


class EvalItem(SQLModel, table=True):
    __tablename__ = "eval_items"

    id: str = Field(primary_key=True)
    run_id: str = Field(index=True)
    idx: int
    source_id: str | None = None  # the captured completion's id (or the JSONL line number)
    messages: str = "[]"
    params: str = "{}"  # request parameters to reuse (temperature, response_format, ...)
    reference: str | None = None
    reference_kind: str = "teacher"  # "teacher" or "gold"
    teacher_output: str | None = None
    teacher_model: str | None = None
    teacher_prompt_tokens: int | None = None
    teacher_completion_tokens: int | None = None
    teacher_latency_ms: float | None = None
    metadata_: str = Field(default="{}", sa_column_kwargs={"name": "metadata"})


class EvalOutput(SQLModel, table=True):
    __tablename__ = "eval_outputs"

    id: str = Field(primary_key=True)  # "<item_id>/<candidate>"
    run_id: str = Field(index=True)
    item_id: str
    candidate: str
    status: str = "ok"  # "ok" or "error"
    output: str | None = None
    model: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 1
    error: str | None = None
    created_at: int = 0


class EvalScore(SQLModel, table=True):
    __tablename__ = "eval_scores"

    id: str = Field(primary_key=True)  # "<item_id>/<candidate>/<metric>"
    run_id: str = Field(index=True)
    item_id: str
    candidate: str  # "teacher" for the teacher's own stored answer
    metric: str
    score: float | None = None


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()


def new_run_id() -> str:
    return "evalrun_" + secrets.token_hex(12)


# ---------------------------------------------------------------------------------------------
# Selecting captured completions as eval items


def select_completions(store: Store, *, limit: int | None = None, **window: Unpack[Window]) -> list[dict[str, Any]]:
    """Successful teacher answers (the store's one definition: no student's, no shadow's) by model,
    metadata pairs and creation time (Unix seconds, ``since`` inclusive, ``until`` exclusive), oldest
    first; each with request, response, usage and the latest feedback ``correction`` (a gold answer)
    if any. Only the teacher's answers: an item's ``teacher_output`` is the reference candidates are
    scored against, and a student's (or shadow's) answer there would score a student against itself."""
    # The latest feedback correction is the item's gold answer (feedback is table v3; a store
    # migrated only to v2 has none).
    has_feedback = store.cursor().execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'feedback'"
    ).fetchone()[0]
    gold = (
        f"(SELECT {store.dialect.arg_max('f.correction', 'f.created_at')} FROM feedback f WHERE f.completion_id = completions.id "
        "AND f.correction IS NOT NULL)" if has_feedback else "NULL"
    )
    sql, params = ordered_select(
        store,
        "id, created, model, model_requested, request, response, metadata, latency_ms, prompt_tokens, "
        f"completion_tokens, {gold} AS correction",
        limit=limit, alias="", stored_only=True, teacher_only=True, **window,
    )
    cols = ["id", "created", "model", "model_requested", "request", "response", "metadata", "latency_ms",
            "prompt_tokens", "completion_tokens", "correction"]
    rows = store.cursor().execute(sql, params).fetchall()
    out = []
    for row in rows:
        rec = dict(zip(cols, row))
        rec["request"] = orjson.loads(rec["request"])
        rec["response"] = orjson.loads(rec["response"])
        rec["metadata"] = orjson.loads(rec["metadata"] or "{}")
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# Runs


_RUN_COLS = ["id", "created_at", "name", "status", "spec", "n_items", "n_candidates", "started_at", "completed_at",
             "error", "results"]


def _run_row(row: Sequence[Any]) -> dict[str, Any]:
    run = dict(zip(_RUN_COLS, row))
    run["spec"] = orjson.loads(run["spec"] or "{}")
    run["error"] = orjson.loads(run["error"]) if run["error"] else None
    run["results"] = orjson.loads(run["results"]) if run["results"] else None
    return run


def create_run(
    store: Store, spec: dict[str, Any], items: Sequence[dict[str, Any]], *, name: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Insert a queued run with its items (each a dict of EvalItem fields without ids)."""
    run_id = run_id or new_run_id()
    now = int(time.time())
    n_cand = len(spec.get("candidates") or [])
    rows = []
    for idx, item in enumerate(items):
        rows.append([
            f"{run_id}/{idx:06d}", run_id, idx, item.get("source_id"), _dumps(item.get("messages") or []),
            _dumps(item.get("params") or {}), item.get("reference"), item.get("reference_kind") or "teacher",
            item.get("teacher_output"), item.get("teacher_model"), item.get("teacher_prompt_tokens"),
            item.get("teacher_completion_tokens"), item.get("teacher_latency_ms"), _dumps(item.get("metadata") or {}),
        ])
    cur = store.cursor()
    with transaction(cur):
        cur.execute(
            "INSERT INTO eval_runs (id, created_at, name, status, spec, n_items, n_candidates) VALUES (?, ?, ?, 'queued', ?, ?, ?)",
            [run_id, now, name, _dumps(spec), len(rows), n_cand],
        )
        if rows:
            cur.executemany(
                "INSERT INTO eval_items (id, run_id, idx, source_id, messages, params, reference, reference_kind, "
                "teacher_output, teacher_model, teacher_prompt_tokens, teacher_completion_tokens, teacher_latency_ms, "
                "metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
    return get_run(store, run_id)  # type: ignore[return-value]


def get_run(store: Store, run_id: str) -> dict[str, Any] | None:
    row = store.cursor().execute(f"SELECT {', '.join(_RUN_COLS)} FROM eval_runs WHERE id = ?", [run_id]).fetchone()
    return _run_row(row) if row else None


def list_runs(store: Store, *, after: str | None = None, limit: int = 20, order: str = "desc") -> tuple[list[dict[str, Any]], bool]:
    """A page of runs by creation time (newest first by default) and whether more follow."""
    cur = store.cursor()
    direction = "ASC" if order == "asc" else "DESC"
    cmp = ">" if order == "asc" else "<"
    where, params = "TRUE", []
    if after:
        pos = cur.execute("SELECT created_at FROM eval_runs WHERE id = ?", [after]).fetchone()
        if pos is not None:
            where = f"(created_at {cmp} ? OR (created_at = ? AND id {cmp} ?))"
            params = [pos[0], pos[0], after]
    rows = cur.execute(
        f"SELECT {', '.join(_RUN_COLS)} FROM eval_runs WHERE {where} ORDER BY created_at {direction}, id {direction} LIMIT ?",
        params + [int(limit) + 1],
    ).fetchall()
    return [_run_row(r) for r in rows[:limit]], len(rows) > limit


def update_run(store: Store, run_id: str, **fields: Any) -> None:
    """Set status/started_at/completed_at/error/results (fixed column names from code only)."""
    allowed = {"status", "started_at", "completed_at", "error", "results", "name"}
    sets, params = [], []
    for key, value in fields.items():
        if key not in allowed:
            raise ValueError(f"unknown eval run field {key!r}")
        if key in ("error", "results") and value is not None:
            value = _dumps(value)
        sets.append(f"{key} = ?")
        params.append(value)
    if sets:
        store.cursor().execute(f"UPDATE eval_runs SET {', '.join(sets)} WHERE id = ?", params + [run_id])


def progress(store: Store, run_id: str) -> dict[str, int]:
    """Counts for following a run: total pairs, finished ok, errored, pending."""
    run = store.cursor().execute("SELECT n_items, n_candidates FROM eval_runs WHERE id = ?", [run_id]).fetchone()
    if run is None:
        return {"total": 0, "completed": 0, "errored": 0, "pending": 0}
    ok, err = store.cursor().execute(
        "SELECT count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE status <> 'ok') FROM eval_outputs WHERE run_id = ?",
        [run_id],
    ).fetchone()
    total = int(run[0]) * int(run[1])
    return {"total": total, "completed": int(ok), "errored": int(err), "pending": max(total - int(ok) - int(err), 0)}


def progress_by_candidate(store: Store, run_id: str) -> dict[str, dict[str, int]]:
    """:func:`progress` per candidate name: ``{"answered", "errored"}`` outputs (the caller knows the
    items and the candidates, so pending and total are its arithmetic)."""
    rows = store.cursor().execute(
        "SELECT candidate, count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE status <> 'ok') "
        "FROM eval_outputs WHERE run_id = ? GROUP BY candidate", [run_id],
    ).fetchall()
    return {r[0]: {"answered": int(r[1]), "errored": int(r[2])} for r in rows}


# ---------------------------------------------------------------------------------------------
# Items, outputs, scores

_ITEM_COLS = ["id", "run_id", "idx", "source_id", "messages", "params", "reference", "reference_kind", "teacher_output",
              "teacher_model", "teacher_prompt_tokens", "teacher_completion_tokens", "teacher_latency_ms", "metadata"]


def list_items(store: Store, run_id: str) -> list[dict[str, Any]]:
    rows = store.cursor().execute(
        f"SELECT {', '.join(_ITEM_COLS)} FROM eval_items WHERE run_id = ? ORDER BY idx", [run_id]
    ).fetchall()
    out = []
    for row in rows:
        item = dict(zip(_ITEM_COLS, row))
        for key in ("messages", "params", "metadata"):
            item[key] = orjson.loads(item[key] or "null")
        out.append(item)
    return out


_OUT_COLS = ["id", "run_id", "item_id", "candidate", "status", "output", "model", "latency_ms", "prompt_tokens",
             "completion_tokens", "attempts", "error", "created_at"]


def save_output(
    store: Store, run_id: str, item_id: str, candidate: str, *, status: str, output: str | None = None,
    model: str | None = None, latency_ms: float | None = None, prompt_tokens: int | None = None,
    completion_tokens: int | None = None, attempts: int = 1, error: str | None = None,
) -> None:
    """Write (or replace) one generated output the moment it arrives, so a crash loses nothing."""
    store.cursor().execute(
        f"INSERT OR REPLACE INTO eval_outputs ({', '.join(_OUT_COLS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [f"{item_id}/{candidate}", run_id, item_id, candidate, status, output, model, latency_ms, prompt_tokens,
         completion_tokens, attempts, error, int(time.time())],
    )


_OUT_SCHEMA = pa.schema([
    ("id", pa.string()), ("run_id", pa.string()), ("item_id", pa.string()), ("candidate", pa.string()),
    ("status", pa.string()), ("output", pa.string()), ("model", pa.string()), ("latency_ms", pa.float64()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("attempts", pa.int64()), ("error", pa.string()),
    ("created_at", pa.int64()),
])


def save_outputs(store: Store, run_id: str, outputs: Sequence[dict[str, Any]]) -> int:
    """Write several outputs in one transaction (one WAL sync instead of one per output: a
    file-backed DuckDB commit costs milliseconds). Each dict has save_output's keyword fields plus
    ``item_id`` and ``candidate``; an earlier output of the same pair (an error) is replaced."""
    if not outputs:
        return 0
    now = int(time.time())
    rows = [
        [f"{o['item_id']}/{o['candidate']}", run_id, o["item_id"], o["candidate"], o["status"], o.get("output"),
         o.get("model"), o.get("latency_ms"), o.get("prompt_tokens"), o.get("completion_tokens"), o.get("attempts", 1),
         o.get("error"), now]
        for o in outputs
    ]
    table = pa.table({col: [r[i] for r in rows] for i, col in enumerate(_OUT_COLS)}, schema=_OUT_SCHEMA)
    cur = store.cursor()
    with registered(cur, "_protege_eval_outputs", table), transaction(cur):
        cur.execute("DELETE FROM eval_outputs WHERE id IN (SELECT id FROM _protege_eval_outputs)")
        cur.execute(f"INSERT INTO eval_outputs ({', '.join(_OUT_COLS)}) SELECT {', '.join(_OUT_COLS)} FROM _protege_eval_outputs")
    return len(rows)


def list_outputs(store: Store, run_id: str) -> list[dict[str, Any]]:
    rows = store.cursor().execute(
        f"SELECT {', '.join(_OUT_COLS)} FROM eval_outputs WHERE run_id = ? ORDER BY item_id, candidate", [run_id]
    ).fetchall()
    return [dict(zip(_OUT_COLS, r)) for r in rows]


def done_pairs(store: Store, run_id: str) -> set[tuple[str, str]]:
    """(item_id, candidate) pairs with a successful output: a resumed run skips exactly these."""
    rows = store.cursor().execute(
        "SELECT item_id, candidate FROM eval_outputs WHERE run_id = ? AND status = 'ok'", [run_id]
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def save_scores(store: Store, run_id: str, rows: Iterable[tuple[str, str, str, float | None]]) -> int:
    """Replace a run's item scores with ``(item_id, candidate, metric, score)`` rows."""
    data = [[f"{item}/{cand}/{metric}", run_id, item, cand, metric, score] for item, cand, metric, score in rows]
    cur = store.cursor()
    with transaction(cur):
        cur.execute("DELETE FROM eval_scores WHERE run_id = ?", [run_id])
        if data:
            cur.executemany("INSERT INTO eval_scores (id, run_id, item_id, candidate, metric, score) VALUES (?, ?, ?, ?, ?, ?)", data)
    return len(data)


def list_scores(store: Store, run_id: str) -> list[dict[str, Any]]:
    rows = store.cursor().execute(
        "SELECT item_id, candidate, metric, score FROM eval_scores WHERE run_id = ? ORDER BY item_id, candidate, metric",
        [run_id],
    ).fetchall()
    return [{"item_id": r[0], "candidate": r[1], "metric": r[2], "score": r[3]} for r in rows]


__all__ = [
    "EvalItem", "EvalOutput", "EvalRun", "EvalScore", "RUN_STATUSES", "create_run", "done_pairs", "get_run",
    "list_items", "list_outputs", "list_runs", "list_scores", "new_run_id", "progress", "save_output",
    "save_outputs", "save_scores", "select_completions", "update_run",
]
