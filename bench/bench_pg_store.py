"""PostgreSQL store speed against the DuckDB store, measured in the same run on the same records.

    python bench/bench_pg_store.py                       # 50k captures, batches of 256, 3 runs
    python bench/bench_pg_store.py --rows 20000 --runs 3  # quick

Figures (each the median of ``--runs``):
- bulk insert (``insert_records``: COPY on PostgreSQL, Arrow on DuckDB) in the capture writer's
  batch size, completions/s, and the ratio PostgreSQL / DuckDB (issue 12's capture target is
  >= 0.8x at 32 connections through the proxy; this isolates the store's share);
- ``list_stored`` with a metadata filter (the GIN index) and without, ms per page;
- ``copy_store`` DuckDB -> PostgreSQL, completions/s (target >= 20,000/s).
The PostgreSQL server is a throw-away one (tests/postgres.py: fsync off, as in the tests), so the
figures bound the database's CPU cost, not a production disk's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protege.store import Store, copy_store, insert_records, list_stored, record_from_completion  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402


def records(n: int, offset: int = 0) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        response = {"id": f"up-{i}", "object": "chat.completion", "created": 1_700_000_000 + i, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "answer " * 60},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 60, "total_tokens": 110}}
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i} " + "x" * 300}]}
        out.append(record_from_completion(response, request, metadata={"env": "prod" if i % 10 else "dev", "i": str(i)},
                                          source="proxy", id=f"chatcmpl-{i}", upstream_id=f"up-{i}"))
    return out


def insert_rate(store: Store, rows: int, batch: int, offset: int) -> float:
    recs = records(rows, offset)
    t = time.perf_counter()
    for i in range(0, rows, batch):
        insert_records(store, recs[i : i + batch])
    return rows / (time.perf_counter() - t)


def list_ms(store: Store, **kw) -> float:
    times = []
    for _ in range(7):
        t = time.perf_counter()
        list_stored(store, limit=20, **kw)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    server = PostgresServer()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    try:
        duck_rates, pg_rates = [], []
        duck = Store(str(tmp / "b.duckdb"), data_dir=tmp / "d")
        pg = Store(server.database(), data_dir=tmp / "p")
        for run in range(args.runs):
            duck_rates.append(insert_rate(duck, args.rows, args.batch, run * args.rows))
            pg_rates.append(insert_rate(pg, args.rows, args.batch, run * args.rows))
        pg.cursor().execute("ANALYZE completions")
        d, p = statistics.median(duck_rates), statistics.median(pg_rates)
        print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
        print(f"rows per run {args.rows}, batch {args.batch}, runs {args.runs}; table holds {args.rows * args.runs}")
        print(f"insert  duckdb {d:,.0f}/s  postgresql {p:,.0f}/s  ratio {p / d:.2f}")
        for name, kw in (("list, no filter", {}), ("list, env=dev", {"metadata": {"env": "dev"}}),
                         ("list, rare pair", {"metadata": {"i": "777"}}), ("list desc, env=prod", {"metadata": {"env": "prod"}, "order": "desc"})):
            print(f"{name:22s} duckdb {list_ms(duck, **kw):7.2f} ms  postgresql {list_ms(pg, **kw):7.2f} ms")
        copy_rates = []
        for _ in range(args.runs):
            dst = Store(server.database(), data_dir=tmp / "c")
            t = time.perf_counter()
            res = copy_store(duck, dst)
            copy_rates.append(res.copied["completions"] / (time.perf_counter() - t))
            dst.close()
        print(f"copy_store duckdb -> postgresql {statistics.median(copy_rates):,.0f} completions/s")
        duck.close()
        pg.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
