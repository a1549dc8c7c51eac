"""`completion_stats` numbers on a real DuckDB file."""

from __future__ import annotations

from protege.store import Store, insert_records, record_from_completion
from protege.store.stats import completion_stats


def rec(i: int, model: str, outcome: str = "ok", created: int = 1_735_689_600, **extra) -> dict:
    response = {"id": f"c{i}", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": i, "completion_tokens": 1, "total_tokens": i + 1}}
    r = record_from_completion(response, None, metadata={"i": str(i % 2)}, latency_ms=float(i * 10), ttft_ms=float(i))
    r.update(outcome=outcome, **extra)
    return r


def test_stats_numbers_and_filters(store_db, tmp_path):
    s = Store(store_db, data_dir=tmp_path / "data")
    empty = completion_stats(s)
    assert empty["total"] == 0 and empty["error_rate"] == 0.0 and empty["latency_ms"] == {"p50": None, "p95": None}
    insert_records(s, [rec(i, "a" if i < 6 else "b", created=1_735_689_600 + (i // 5) * 86_400) for i in range(1, 11)])
    insert_records(s, [rec(11, "b", outcome="timeout", response=None, latency_ms=None, ttft_ms=None,
                           prompt_tokens=None, completion_tokens=None, total_tokens=None)])
    st = completion_stats(s)
    assert (st["total"], st["ok"], st["errors"]) == (11, 10, 1)
    assert st["error_rate"] == round(1 / 11, 4)
    assert st["tokens"] == {"prompt": 55, "completion": 10, "total": 65}
    assert st["latency_ms"]["p50"] == 55.0 and st["latency_ms"]["p95"] == 95.5
    assert st["ttft_ms"]["p50"] == 5.5
    assert st["by_outcome"] == {"ok": 10, "timeout": 1}
    assert [(m["model"], m["count"], m["ok"], m["errors"]) for m in st["by_model"]] == [("b", 6, 5, 1), ("a", 5, 5, 0)]  # most captures first
    assert st["per_day"] == [{"day": "2025-01-01", "count": 5}, {"day": "2025-01-02", "count": 5},
                             {"day": "2025-01-03", "count": 1}]
    only = completion_stats(s, model="a", metadata={"i": "1"})
    assert only["total"] == 3 and only["tokens"]["prompt"] == 1 + 3 + 5
    assert completion_stats(s, since=1_735_689_600 + 86_400, until=1_735_689_600 + 2 * 86_400)["total"] == 5
    s.close()
