"""Read-only queries behind the web console's traffic and overview pages.

The console pages over millions of captures, newest first, so a page is found by *keyset* on
``seq`` (``seq < before``, ``ORDER BY seq DESC LIMIT n``): DuckDB's top-N cuts the scan short with
the ``seq`` zone maps, so every page costs about the same however deep it is, where ``OFFSET`` would
read every row it skips. Filters are :func:`store.completions.completion_filter`'s (the Stored API's
own), plus who served the answer. One statement reads a page: DuckDB (2.x) materialises the wide
columns (the request text) only for the rows the top-N keeps. Measured at 1M rows, this is 3-4x
faster for a rare metadata pair (one row in 10,000: ~95 ms against ~300 ms) than a two-step read
(``seq`` values first, then their rows by ``seq IN (...)``), whose second step decompresses a
vector of request text for every row it fetches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .completions import completion_filter
from .db import Store
from .dialect import DUCKDB, Dialect
from .messages import last_user_text

ServedBy = Literal["teacher", "student"]

# Columns a traffic row shows (the request is read only to show the last user message).
_ROW_COLS = (
    "seq", "id", "created", "model_requested", "model", "outcome", "status_code", "latency_ms", "ttft_ms",
    "prompt_tokens", "completion_tokens", "total_tokens", "served_by", "source", "stream", "metadata", "finish_reason",
    "request",
)


@dataclass
class TrafficFilter:
    """What the traffic page filters on; every value is bound as a parameter, never SQL text."""

    model: str | None = None
    metadata: dict[str, str] | None = None
    since: float | None = None
    until: float | None = None
    outcome: str | None = None
    served_by: ServedBy | None = None

    def where(self, alias: str = "c", dialect: Dialect = DUCKDB) -> tuple[str, list[Any]]:
        where, params = completion_filter(
            model=self.model, metadata=self.metadata, since=self.since, until=self.until, outcome=self.outcome, alias=alias,
            dialect=dialect,
        )
        if self.served_by == "student":
            where += f" AND {alias}.served_by = 'student'"
        elif self.served_by == "teacher":
            where += f" AND coalesce({alias}.served_by, 'teacher') = 'teacher'"
        return where, params


@dataclass
class TrafficPage:
    rows: list[dict[str, Any]]
    next_before: int | None  # pass as ``before`` for the next (older) page; None on the last page


def traffic_page(store: Store, flt: TrafficFilter, *, before: int | None = None, limit: int = 50) -> TrafficPage:
    """One page of captures, newest first, older than ``before`` (a ``seq``)."""
    where, params = flt.where("c", store.dialect)
    if before is not None:
        where += " AND c.seq < ?"
        params.append(int(before))
    rows = store.cursor().execute(
        f"SELECT {', '.join('c.' + c for c in _ROW_COLS)} FROM completions c WHERE {where} ORDER BY c.seq DESC LIMIT ?",
        params + [limit + 1],
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    out = []
    for row in rows:
        rec = dict(zip(_ROW_COLS, row))
        rec["metadata"] = orjson.loads(rec["metadata"] or "{}")
        rec["preview"] = _last_user_text(rec.pop("request"))
        out.append(rec)
    return TrafficPage(out, out[-1]["seq"] if more and out else None)


def _last_user_text(request: str | None, limit: int = 160) -> str:
    try:
        messages = orjson.loads(request or "{}").get("messages") or []
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    text = " ".join(last_user_text(messages, sep=" ").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def traffic_models(store: Store, limit: int = 50) -> list[str]:
    """Requested model names seen in traffic (for the filter's suggestions), most used first."""
    rows = store.cursor().execute(
        "SELECT model_requested FROM completions WHERE model_requested IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC LIMIT ?", [limit]
    ).fetchall()
    return [r[0] for r in rows]


def overview(store: Store, since: float, bucket_s: int = 60) -> dict[str, Any]:
    """Requests, errors, tokens and latency percentiles since ``since``, in total and per bucket."""
    cur = store.cursor()
    q = functools.partial(store.dialect.quantile, "latency_ms")
    total, errors, tokens, p50, p95, p99 = cur.execute(
        "SELECT count(*), count(*) FILTER (WHERE outcome <> 'ok'), coalesce(sum(total_tokens), 0), "
        f"{q(0.5)}, {q(0.95)}, {q(0.99)} "
        "FROM completions WHERE created >= ? AND source <> 'shadow'",
        [int(since)],
    ).fetchone()
    buckets = [
        {"t": int(t) * bucket_s, "requests": int(n), "errors": int(e), "tokens": int(tok),
         "p50_ms": None if a is None else round(float(a), 1), "p95_ms": None if b is None else round(float(b), 1)}
        for t, n, e, tok, a, b in cur.execute(
            # the bucket number as whole-number division both dialects spell alike (DuckDB's // is its own)
            "SELECT (created - created % ?) / ? AS b, count(*), count(*) FILTER (WHERE outcome <> 'ok'), "
            f"coalesce(sum(total_tokens), 0), {q(0.5)}, {q(0.95)} "
            "FROM completions WHERE created >= ? AND source <> 'shadow' GROUP BY b ORDER BY b",
            [bucket_s, bucket_s, int(since)],
        ).fetchall()
    ]
    return {
        "requests": int(total), "errors": int(errors), "error_rate": (errors / total) if total else 0.0, "tokens": int(tokens),
        "latency_ms": {k: None if v is None else round(float(v), 1) for k, v in (("p50", p50), ("p95", p95), ("p99", p99))},
        "buckets": buckets,
    }


def student_usage(store: Store, since: float | None = None) -> list[dict[str, Any]]:
    """Tokens of answers a student gave to clients (not shadow answers), by requested and serving model:
    what the teacher (the requested model) would have charged for them is what students saved."""
    where, params = "served_by = 'student' AND source <> 'shadow' AND outcome = 'ok'", []
    if since is not None:
        where += " AND created >= ?"
        params.append(int(since))
    rows = store.cursor().execute(
        f"SELECT model_requested, model, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) "
        f"FROM completions WHERE {where} GROUP BY 1, 2 ORDER BY 3 DESC",
        params,
    ).fetchall()
    return [{"teacher_model": t, "student_model": s, "requests": int(n), "prompt_tokens": int(p), "completion_tokens": int(c)}
            for t, s, n, p, c in rows]


def paired_answers_timed(
    store: Store, model: str | None, metadata: dict[str, str] | None, after_seq: int = 0, limit: int = 100_000
) -> list[tuple[int, str, str]]:
    """(created, primary response JSON, second response JSON) for each second answer (shadow student, or
    teacher behind a student) to matching traffic after ``after_seq``, oldest first: online agreement over time."""
    where, params = completion_filter(model=model, metadata=metadata, alias="p", dialect=store.dialect)
    sql = (
        "SELECT s.created, p.response, s.response FROM completions s JOIN completions p ON p.id = s.paired_with "
        "WHERE s.paired_with IS NOT NULL AND s.outcome = 'ok' AND p.outcome = 'ok' AND s.response IS NOT NULL "
        f"AND p.response IS NOT NULL AND s.seq > ? AND p.source <> 'shadow' AND {where} ORDER BY s.seq DESC LIMIT ?"
    )
    rows = store.cursor().execute(sql, [int(after_seq), *params, int(limit)]).fetchall()
    return [(int(t), p, s) for t, p, s in reversed(rows)]


__all__ = ["TrafficFilter", "TrafficPage", "overview", "paired_answers_timed", "student_usage", "traffic_models", "traffic_page"]
