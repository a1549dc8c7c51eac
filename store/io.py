"""Import and export of captured completions (JSONL of OpenAI chat completions, and Parquet).

A team usually has logs before it has Protege, so the import takes the shapes those logs come in,
one JSON object per line:

* a ``chat.completion`` object with the request beside it, as ``messages`` (what our JSONL export
  writes, so export -> import round-trips) or a whole ``request`` object;
* ``{"request": {...}, "response": {...}}`` (what most logging proxies write);
* a fine-tuning line ``{"messages": [..., {"role": "assistant", ...}]}``: the last assistant message
  becomes the answer.

A bad line is reported with its number and skipped; the rest is imported. Lines are parsed in
Python (orjson) and written in Arrow batches through :func:`insert_records`.

The import is idempotent: a line whose completion is already stored (same id, same messages, answer
and model, and the same ``created`` when the line gives one) is skipped, so importing a file twice
stores it once. A line whose id is taken by a different completion is stored under a fresh id and
reported; its own id is kept in ``upstream_id`` (ids are unique in the store: store/ids.py).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import orjson
import pyarrow as pa

from .completions import (
    _COLS, COLUMNS, RecordFilters, Window, insert_records, ordered_select, record_from_completion, stored_object,
)
from .db import Store
from .ids import resolve_ids

if TYPE_CHECKING:
    from typing_extensions import Unpack

# Request parameters that the Stored Completions object carries beside the completion (and that an
# import moves back into the request).
REQUEST_PARAMS = ("seed", "top_p", "temperature", "presence_penalty", "frequency_penalty", "tools", "tool_choice", "response_format")
_LINE_ONLY = ("messages", "request", "metadata", "input_user", "request_id") + REQUEST_PARAMS


class LineError(ValueError):
    """A line that is not one of the accepted shapes (message says why)."""


@dataclass
class ImportResult:
    lines: int = 0
    imported: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    error_count: int = 0
    skipped: int = 0  # already stored: the same completion, imported before or twice in the file
    reided: list[tuple[int, str, str]] = field(default_factory=list)  # (line, its id, the id it got), first max_errors
    reided_count: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "imported": self.imported,
            "skipped_duplicates": self.skipped,
            "reided": self.reided_count,
            "failed": self.error_count,
            "errors": [{"line": n, "error": msg} for n, msg in self.errors],
            "reided_ids": [{"line": n, "id": old, "new_id": new} for n, old, new in self.reided],
        }


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise LineError(f"`{where}` must be a non-empty list of messages")
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise LineError(f"`{where}[{i}]` must be an object with a `role`")
    return value


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LineError("`metadata` must be an object of string keys and values")
    return {str(k): v if isinstance(v, str) else orjson.dumps(v).decode() if isinstance(v, (dict, list)) else str(v) for k, v in value.items()}


def _check_response(response: Any) -> dict[str, Any]:
    if not isinstance(response, dict):
        raise LineError("`response` must be a chat.completion object")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LineError("the completion has no `choices`")
    return response


def record_from_line(obj: Any, *, default_model: str | None = None, source: str = "import") -> dict[str, Any]:
    """One JSONL line (already parsed) -> a completions record, or :class:`LineError`."""
    if not isinstance(obj, dict):
        raise LineError("expected a JSON object")
    if isinstance(obj.get("response"), dict) or "response" in obj and "request" in obj:
        request = obj.get("request")
        if not isinstance(request, dict):
            raise LineError("`request` must be an object")
        response = _check_response(obj.get("response"))
        _messages(request.get("messages"), "request.messages")
        md = _metadata(obj.get("metadata") if obj.get("metadata") is not None else request.get("metadata"))
        request_id = obj.get("request_id") or response.get("request_id")
    elif "choices" in obj or obj.get("object") == "chat.completion":
        response = _check_response({k: v for k, v in obj.items() if k not in _LINE_ONLY})
        if isinstance(obj.get("request"), dict):
            request = obj["request"]
            _messages(request.get("messages"), "request.messages")
        elif "messages" in obj:
            request = {"model": obj.get("model") or default_model, "messages": _messages(obj["messages"], "messages")}
            for key in REQUEST_PARAMS:
                if obj.get(key) is not None:
                    request[key] = obj[key]
            if obj.get("input_user") is not None:
                request["user"] = obj["input_user"]
        else:
            raise LineError("a chat.completion line needs the request: a `messages` list or a `request` object")
        md = _metadata(obj.get("metadata") if obj.get("metadata") is not None else request.get("metadata"))
        request_id = obj.get("request_id")
    elif "messages" in obj:
        messages = _messages(obj["messages"], "messages")
        answer = messages[-1]
        if answer.get("role") != "assistant":
            raise LineError("a fine-tuning line must end with an assistant message")
        model = obj.get("model") or default_model or "unknown"
        request = {"model": model, "messages": messages[:-1]}
        if not request["messages"]:
            raise LineError("a fine-tuning line needs at least one message before the assistant's")
        for key in ("tools", "parallel_tool_calls"):
            if key in obj:
                request[key] = obj[key]
        message = {
            "role": "assistant",
            "content": answer.get("content"),
            "refusal": answer.get("refusal"),
            "tool_calls": answer.get("tool_calls"),
        }
        response = {
            "id": _content_id(obj),
            "object": "chat.completion",
            "created": int(obj.get("created") or time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if message["tool_calls"] else "stop", "logprobs": None}
            ],
        }
        md = _metadata(obj.get("metadata"))
        request_id = None
    else:
        raise LineError("not a chat completion: expected a chat.completion object, {request, response} or {messages}")
    if not response.get("id"):
        response = {**response, "id": _content_id(obj)}
    if not isinstance(response.get("created"), (int, float)):
        response = {**response, "created": int(time.time())}
    if response.get("usage") is not None and not isinstance(response["usage"], dict):
        raise LineError("`usage` must be an object")
    if request.get("model") is None:
        request = {**request, "model": response.get("model") or default_model}
    if response.get("model") is None:
        response = {**response, "model": request.get("model")}
    rec = record_from_completion(response, request, metadata=md, source=source, request_id=request_id)
    if rec["store"] is None:
        rec["store"] = True
    for name, kind in _CHECKS:  # a wrong type would fail the whole Arrow batch, not just this line
        value = rec.get(name)
        if value is not None and not (isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))):
            raise LineError(f"`{_FIELD_NAMES.get(name, name)}` has the wrong type ({type(value).__name__})")
    return rec


def _content_id(obj: dict[str, Any]) -> str:
    """An id for a line that has none, derived from its content: importing it again finds it."""
    digest = hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()
    return f"chatcmpl-imp{digest}"


# The columns whose values come from the line itself (the rest are built here, of the right type).
_FROM_LINE = ("id", "model_requested", "model", "store", "prompt_tokens", "completion_tokens", "total_tokens",
              "finish_reason", "request_id")
_CHECKS = [
    (name, str if pa.types.is_string(t) else bool if pa.types.is_boolean(t) else int if pa.types.is_integer(t) else (int, float))
    for name, t in COLUMNS.items()
    if name in _FROM_LINE
]
_FIELD_NAMES = {
    "prompt_tokens": "usage.prompt_tokens", "completion_tokens": "usage.completion_tokens",
    "total_tokens": "usage.total_tokens", "model_requested": "request.model", "finish_reason": "choices[0].finish_reason",
}


def import_jsonl(
    store: Store,
    path: str | os.PathLike[str],
    *,
    default_model: str | None = None,
    batch_size: int = 10_000,
    max_errors: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import a JSONL file; bad lines are counted and (the first ``max_errors``) reported, not fatal.

    ``progress`` is called with the number of bytes read since the last call.
    """
    result = ImportResult()
    batch: list[dict[str, Any]] = []
    batch_lines: list[tuple[int, bool]] = []  # (line number, the line gave `created`)
    loads = orjson.loads
    pending_bytes = 0
    # One writer thread: DuckDB releases the GIL while it inserts, so parsing the next batch
    # overlaps writing this one (~1.5x on two cores). One batch in flight keeps memory bounded
    # and the order of `seq` the order of the file.
    with ThreadPoolExecutor(1, thread_name_prefix="protege-import") as pool:
        in_flight: Future[int] | None = None

        def write(records: list[dict[str, Any]], lines: list[tuple[int, bool]]) -> None:
            nonlocal in_flight
            if in_flight is not None:
                result.imported += in_flight.result()
            # Ids are resolved against the store once the previous batch is in it.
            resolved = resolve_ids(store, records, check_created=[given for _n, given in lines])
            result.skipped += len(resolved.skipped)
            result.reided_count += len(resolved.reided)
            for i, old, new in resolved.reided[: max(0, max_errors - len(result.reided))]:
                result.reided.append((lines[i][0], old, new))
            records = resolved.records
            in_flight = pool.submit(insert_records, store, records)

        with open(path, "rb") as fh:
            for n, line in enumerate(fh, 1):
                pending_bytes += len(line)
                result.lines = n
                if not line.strip():
                    continue
                try:
                    obj = loads(line)
                    batch.append(record_from_line(obj, default_model=default_model))
                    batch_lines.append((n, _gives_created(obj)))
                except (LineError, orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
                    result.error_count += 1
                    if len(result.errors) < max_errors:
                        msg = f"invalid JSON ({exc})" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
                        result.errors.append((n, msg))
                if len(batch) >= batch_size:
                    write(batch, batch_lines)
                    batch, batch_lines = [], []
                    if progress:
                        progress(pending_bytes)
                        pending_bytes = 0
        if batch:
            write(batch, batch_lines)
        if in_flight is not None:
            result.imported += in_flight.result()
    if progress and pending_bytes:
        progress(pending_bytes)
    return result


def _gives_created(obj: Any) -> bool:
    holder = obj.get("response") if isinstance(obj.get("response"), dict) else obj
    created = holder.get("created")
    return isinstance(created, (int, float)) and not isinstance(created, bool)


# ---------------------------------------------------------------------------------------------
# Export


def export_object(response: str, request: str, metadata: str, completion_id: str, request_id: str | None) -> dict[str, Any]:
    """The Stored Completions object plus the request's ``messages``: a line :func:`import_jsonl` reads back."""
    obj = stored_object(response, request, metadata, completion_id, request_id)
    obj["messages"] = orjson.loads(request).get("messages") or []
    return obj


def export_jsonl(
    store: Store,
    out: str | os.PathLike[str],
    *,
    order: str = "asc",
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    **window: Unpack[Window],
) -> int:
    """Successful completions as OpenAI ``chat.completion`` lines. Returns the number written."""
    sql, params = ordered_select(
        store, "response, request, metadata, id, request_id", order=order, limit=limit, stored_only=True, **window
    )
    cur = store.cursor()
    cur.execute(sql, params)
    written = 0
    tmp = Path(f"{out}.part")
    with open(tmp, "wb") as fh:
        while True:
            rows = cur.fetchmany(5000)
            if not rows:
                break
            fh.write(b"".join(orjson.dumps(export_object(*r)) + b"\n" for r in rows))
            written += len(rows)
            if progress:
                progress(len(rows))
    os.replace(tmp, out)
    return written


def export_parquet(
    store: Store,
    out: str | os.PathLike[str],
    *,
    order: str = "asc",
    limit: int | None = None,
    **filters: Unpack[RecordFilters],
) -> int:
    """Every column of the matching captures (errors included) via DuckDB's built-in COPY."""
    sql, params = ordered_select(store, _COLS, order=order, limit=limit, **filters)
    tmp = f"{out}.part"
    cur = store.cursor()
    if store.dialect.name == "postgresql":  # the rows come to this process; pyarrow writes the file
        return _parquet_from_rows(cur.execute(sql, params), tmp, out)
    cur.execute(f"COPY ({sql}) TO ? (FORMAT parquet, COMPRESSION zstd)", params + [tmp])
    os.replace(tmp, out)
    return int(cur.execute("SELECT count(*) FROM read_parquet(?)", [str(out)]).fetchone()[0])


def _parquet_from_rows(cur: Any, tmp: str, out: str | os.PathLike[str], batch: int = 20_000) -> int:
    """Write an executed ``SELECT {_COLS}`` as Parquet (zstd, the columns' Arrow types), in batches."""
    import pyarrow.parquet as pq

    schema = pa.schema(list(COLUMNS.items()))
    n = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        while rows := cur.fetchmany(batch):
            cols = list(zip(*rows))
            writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(col, typ) for col, typ in zip(cols, schema.types)], schema=schema
            ))
            n += len(rows)
    os.replace(tmp, out)
    return n


def iter_jsonl(path: str | os.PathLike[str]) -> Iterable[Any]:
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


__all__ = [
    "ImportResult",
    "LineError",
    "export_jsonl",
    "export_object",
    "export_parquet",
    "import_jsonl",
    "record_from_line",
]
