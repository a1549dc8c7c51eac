"""Bring a team's OpenAI traffic: pull its Stored Completions from OpenAI's API into the store.

Teams that called OpenAI with ``store: true`` have history kept at OpenAI; with OpenAI's own
distillation tools closing, this makes it training data here. The official SDK does the paging
(``client.chat.completions.list`` auto-pagination with OpenAI's model and ``metadata[k]=v`` filters)
and ``client.chat.completions.messages.list(id)`` gives each completion's input messages.

Why it lives in ``store``: it is another way in for captured completions, beside the JSONL import,
and ``protege completions import`` (store/cli.py) calls it; putting it in distill would make the
store's CLI import distill, against the one-way imports rule. ``openai`` is already a dependency of
Protege and is imported only when a pull runs, so importing ``protege.store`` stays cheap.

Rows are never written here: each page becomes lines of the Stored Completions shape plus
``messages`` (what ``completions export`` writes) and goes through :func:`protege.store.io.import_jsonl`,
the store's one import path. Idempotent: a completion whose OpenAI id is already a capture's id (or
its kept upstream id, once captures carry one) is skipped before its messages are even fetched, so a
second run stores nothing twice and costs one list call per page.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

from .db import Store

PAGE_SIZE = 100  # OpenAI's maximum ``limit`` for list endpoints
MESSAGE_FETCHERS = 8  # concurrent messages.list calls (the SDK client is thread-safe)


@dataclass
class OpenAIImportResult:
    listed: int = 0
    imported: int = 0
    skipped: int = 0  # already in the store
    failed: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"listed": self.listed, "imported": self.imported, "skipped_existing": self.skipped,
                "failed": self.failed, "errors": self.errors}


def known_ids(store: Store, ids: list[str]) -> set[str]:
    """Which of these OpenAI completion ids the store already holds, as a capture id or as the
    upstream id a capture keeps (the ``upstream_id`` column, where the schema has it)."""
    if not ids:
        return set()
    cur = store.cursor()
    cols = {r[0] for r in cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'completions'").fetchall()}
    marks = ", ".join("?" for _ in ids)
    found: set[str] = set()
    for col in ["id"] + [c for c in ("upstream_id", "source_id") if c in cols]:
        found |= {r[0] for r in cur.execute(f"SELECT DISTINCT {col} FROM completions WHERE {col} IN ({marks})", list(ids)).fetchall()}
    return found


def request_message(m: Any) -> dict[str, Any]:
    """A ``ChatCompletionStoreMessage`` back in the request's message shape (content parts restored)."""
    d = m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else dict(m)
    parts = d.pop("content_parts", None)
    d.pop("id", None)
    for key in ("annotations", "audio", "refusal"):
        if not d.get(key):
            d.pop(key, None)
    if d.get("content") is None and parts:
        d["content"] = parts
    d.setdefault("content", None)
    return d


def _line(completion: Any, messages: list[dict[str, Any]]) -> bytes:
    obj = completion.model_dump(exclude_unset=False)
    obj["messages"] = messages
    return orjson.dumps(obj) + b"\n"


def pull_stored_completions(
    store: Store,
    client: Any,
    *,
    model: str | None = None,
    metadata: dict[str, str] | None = None,
    order: str = "asc",
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> OpenAIImportResult:
    """Import every Stored Completion matching ``model``/``metadata`` (at most ``limit``), oldest first
    by default. ``progress`` is called with the number of completions handled since the last call."""
    from .io import import_jsonl

    result = OpenAIImportResult()
    query: dict[str, Any] = {"limit": PAGE_SIZE, "order": order}
    if model:
        query["model"] = model
    if metadata:
        query["metadata"] = dict(metadata)
    seen: set[str] = set()
    page: list[Any] = []

    def flush(batch: list[Any]) -> None:
        ids = [c.id for c in batch]
        have = known_ids(store, ids)
        new = [c for c in batch if c.id not in have]
        result.skipped += len(batch) - len(new)
        if new:
            with ThreadPoolExecutor(MESSAGE_FETCHERS, thread_name_prefix="protege-openai-import") as pool:
                fetched = list(pool.map(lambda c: _messages(client, c.id), new))
            fd, tmp = tempfile.mkstemp(prefix="protege-openai-", suffix=".jsonl", dir=str(store.data_dir) if store.data_dir.exists() else None)
            try:
                with os.fdopen(fd, "wb") as fh:
                    for c, (msgs, err) in zip(new, fetched):
                        if err is not None:
                            result.failed += 1
                            if len(result.errors) < 100:
                                result.errors.append({"id": c.id, "error": err})
                            continue
                        fh.write(_line(c, msgs))
                res = import_jsonl(store, tmp)
                result.imported += res.imported
                result.failed += res.error_count
                result.errors += [{"line": str(n), "error": e} for n, e in res.errors[: max(0, 100 - len(result.errors))]]
            finally:
                Path(tmp).unlink(missing_ok=True)
        if progress:
            progress(len(batch))

    for completion in client.chat.completions.list(**query):
        if completion.id in seen:
            continue
        seen.add(completion.id)
        result.listed += 1
        page.append(completion)
        if len(page) >= PAGE_SIZE:
            flush(page)
            page = []
        if limit is not None and result.listed >= limit:
            break
    if page:
        flush(page)
    return result


def _messages(client: Any, completion_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """The completion's input messages (all pages), or why they could not be read."""
    import openai

    try:
        msgs = [request_message(m) for m in client.chat.completions.messages.list(completion_id, limit=PAGE_SIZE)]
    except openai.APIStatusError as exc:
        return [], f"messages of {completion_id}: {exc.status_code} {getattr(exc, 'message', exc)}"
    if not msgs:
        return [], f"messages of {completion_id}: OpenAI returned none"
    return msgs, None


def openai_client() -> Any:
    """The official SDK's client, configured the usual way (OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_ORG_ID...)."""
    import openai

    return openai.OpenAI(max_retries=3)


__all__ = ["OpenAIImportResult", "known_ids", "openai_client", "pull_stored_completions", "request_message"]
