"""Summary numbers over captured completions (``protege completions stats``).

One aggregate query per section, run by DuckDB over the columns it needs only, so that a summary of
millions of captures takes a fraction of a second and never loads request or response text.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from .completions import Window, completion_filter
from .db import Store

if TYPE_CHECKING:
    from typing_extensions import Unpack


def completion_stats(store: Store, **window: Unpack[Window]) -> dict[str, Any]:
    """Counts by model and outcome, tokens, latency p50/p95, ttft p50, error rate, captures per day."""
    where, params = completion_filter(dialect=store.dialect, **window)
    q = store.dialect.quantile
    cur = store.cursor()
    total, ok, prompt, completion, tokens, p50, p95, ttft50, first, last = cur.execute(
        f"""
        SELECT count(*), count(*) FILTER (WHERE outcome = 'ok'),
               coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0),
               {q("latency_ms", 0.5)}, {q("latency_ms", 0.95)}, {q("ttft_ms", 0.5)},
               min(created), max(created)
        FROM completions c WHERE {where}
        """,
        params,
    ).fetchone()
    by_model = [
        {"model": m, "count": n, "ok": k, "errors": n - k, "prompt_tokens": int(pt), "completion_tokens": int(ct),
         "latency_p50_ms": _round(lp)}
        for m, n, k, pt, ct, lp in cur.execute(
            f"""
            SELECT coalesce(model, model_requested, '(unknown)') AS m, count(*), count(*) FILTER (WHERE outcome = 'ok'),
                   coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), {q("latency_ms", 0.5)}
            FROM completions c WHERE {where} GROUP BY m ORDER BY count(*) DESC, m
            """,
            params,
        ).fetchall()
    ]
    by_outcome = dict(
        cur.execute(
            f"SELECT outcome, count(*) FROM completions c WHERE {where} GROUP BY outcome ORDER BY count(*) DESC, outcome",
            params,
        ).fetchall()
    )
    per_day = [
        {"day": str(day), "count": n}
        for day, n in cur.execute(
            f"SELECT CAST(to_timestamp(created) AT TIME ZONE 'UTC' AS DATE) AS d, count(*) FROM completions c "
            f"WHERE {where} GROUP BY d ORDER BY d",
            params,
        ).fetchall()
    ]
    return {
        "total": int(total),
        "ok": int(ok),
        "errors": int(total - ok),
        "error_rate": round((total - ok) / total, 4) if total else 0.0,
        "tokens": {"prompt": int(prompt), "completion": int(completion), "total": int(tokens)},
        "latency_ms": {"p50": _round(p50), "p95": _round(p95)},
        "ttft_ms": {"p50": _round(ttft50)},
        "first_created": first,
        "last_created": last,
        "by_model": by_model,
        "by_outcome": by_outcome,
        "per_day": per_day,
    }


def _round(x: float | None) -> float | None:
    """One decimal, half up on the number as printed: the backends' quantiles differ in the last
    bit (DuckDB's p95 of 100..103 ms is 102.85000000000001, PostgreSQL's 102.85), and round()
    would show 102.9 on one and 102.8 on the other."""
    if x is None:
        return None
    return float(Decimal(repr(float(x))).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


__all__ = ["completion_stats"]
