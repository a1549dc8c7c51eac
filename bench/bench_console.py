"""Console speed: the traffic page's first page over 1,000,000 captures, server time.

    python bench/bench_console.py                   # 1M rows, 7 runs per case
    python bench/bench_console.py --rows 100000 --runs 3   # quick

Target (issue 13): the first page of ``/ui/traffic`` in <= 300 ms server time at 1M captures (median,
warm). The rows are written with the store's own bulk insert (``insert_records``, Arrow) in batches.
Each case is timed twice: the store query alone (``store.traffic.traffic_page``) and the whole page
(the route, its query and the template, through ``TestClient`` in this process, so no network). The
baseline, measured in the same run, is the Stored Completions API's first page (``list_stored``,
limit 50, newest first), whose own target is 100 ms; figures are medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

T0 = 1_735_689_600  # 2025-01-01


def records(start: int, n: int) -> list[dict[str, Any]]:
    """~1 KB captures: 3 metadata pairs, 2% errors, 10% served by a student."""
    out = []
    for i in range(start, start + n):
        model = "gpt-4o-mini" if i % 10 < 7 else "gpt-4o"
        ok = i % 50 != 0
        md = f'{{"use_case":"uc{i % 20}","user":"u{i % 10007}","env":"prod"}}'
        out.append({
            "id": f"chatcmpl-b{i:012d}", "created": T0 + i * 3, "started_at": T0 + i * 3.0, "finished_at": T0 + i * 3 + 0.8,
            "model_requested": model, "model": model + "-2024-07-18",
            "request": '{"model":"' + model + '","messages":[{"role":"system","content":"You are a helpful support assistant for ACME. '
                       'Answer briefly."},{"role":"user","content":"Question number ' + str(i) + ' about order ' + format(i * 7919, "x")
                       + ': where is my parcel and when will it arrive? I have been waiting for a while."}],"store":true,"metadata":' + md + "}",
            "response": ('{"id":"chatcmpl-b' + str(i) + '","object":"chat.completion","created":' + str(T0 + i * 3) + ',"model":"' + model
                         + '","choices":[{"index":0,"message":{"role":"assistant","content":"Your parcel is on its way and should arrive '
                         'within two to three business days. You can track it in your account."},"finish_reason":"stop"}],'
                         '"usage":{"prompt_tokens":52,"completion_tokens":31,"total_tokens":83}}') if ok else None,
            "metadata": md, "store": True, "status_code": 200 if ok else 500, "outcome": "ok" if ok else "upstream_error",
            "latency_ms": 300.0 + i % 1000, "ttft_ms": 100.0 + i % 300, "prompt_tokens": 52, "completion_tokens": 31, "total_tokens": 83,
            "finish_reason": "stop", "stream": i % 2 == 0, "upstream": "https://api.openai.com/v1", "key_hash": "k_abc",
            "source": "proxy", "served_by": "student" if i % 10 == 9 else "teacher",
        })
    return out


def build(store: Any, n: int, batch: int = 50_000) -> float:
    from protege.store import insert_records

    t = time.perf_counter()
    for start in range(1, n + 1, batch):
        insert_records(store, records(start, min(batch, n + 1 - start)))
        print(f"\r  inserted {min(start + batch - 1, n):,}/{n:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return time.perf_counter() - t


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from protege.app import build_app
    from protege.settings import Settings
    from protege.store import list_stored
    from protege.store.traffic import TrafficFilter, traffic_page

    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    app, store, _writer = build_app(Settings(db=str(tmp / "c.duckdb")))
    print(f"building {args.rows:,} captures with insert_records ...", file=sys.stderr)
    build_s = build(store, args.rows)
    store.conn.execute("CHECKPOINT")
    mid = args.rows // 2
    cases: list[tuple[str, TrafficFilter, str, int | None]] = [
        ("first page, no filter", TrafficFilter(), "", None),
        ("metadata env=prod (every row)", TrafficFilter(metadata={"env": "prod"}), "meta_key=env&meta_value=prod", None),
        ("metadata use_case=uc7 (1 in 20)", TrafficFilter(metadata={"use_case": "uc7"}), "meta_key=use_case&meta_value=uc7", None),
        ("metadata user=u42 (1 in 10,007)", TrafficFilter(metadata={"user": "u42"}), "meta_key=user&meta_value=u42", None),
        ("model gpt-4o", TrafficFilter(model="gpt-4o"), "model=gpt-4o", None),
        ("served by student", TrafficFilter(served_by="student"), "served_by=student", None),
        ("outcome upstream_error", TrafficFilter(outcome="upstream_error"), "outcome=upstream_error", None),
        ("page at seq 500k (keyset)", TrafficFilter(), "", mid),
    ]
    baseline = median_ms(lambda: list_stored(store, limit=50, order="desc"), args.runs)
    rows = []
    with TestClient(app.api) as client:
        for name, flt, query, before in cases:
            q_ms = median_ms(lambda: traffic_page(store, flt, before=before, limit=50), args.runs)
            url = "/ui/traffic?" + query + (f"&before={before}" if before else "")
            resp = client.get(url)
            assert resp.status_code == 200 and resp.text.count('class="capture-link"') >= 1, (url, resp.status_code)
            p_ms = median_ms(lambda: client.get(url), args.runs)
            rows.append((name, q_ms, p_ms))
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}")
    print(f"rows: {args.rows:,} (insert_records in {build_s:.1f} s), runs: {args.runs} (median, warm)")
    print(f"baseline list_stored(limit=50, order=desc): {baseline:.1f} ms")
    print(f"{'case':36} {'query ms':>9} {'page ms':>9} {'page/baseline':>14}  target <= 300 ms")
    worst = 0.0
    for name, q_ms, p_ms in rows:
        worst = max(worst, p_ms)
        print(f"{name:36} {q_ms:9.1f} {p_ms:9.1f} {p_ms / baseline:14.2f}  {'ok' if p_ms <= 300 else 'SLOW'}")
    return 0 if worst <= 300 else 1


if __name__ == "__main__":
    sys.exit(main())
