"""Benchmark: the overhead of an eval run over plain SDK calls, and the cost of scoring and reports.

Generation is bound by the candidate's latency, so what Protege adds must be small next to it:
per output, an upsert into DuckDB (what makes the run resumable) and the bookkeeping. Baseline,
measured in the same run against the same local fake server (tests/fakes, ``delay`` per request):
the same requests sent with ``AsyncOpenAI`` (one client per candidate) under the same semaphore,
results kept in a list.

Then: scoring (exact_match + chrf, 1,000 bootstrap resamples, teacher + 2 candidates) and the three
reports, for the same items.

    python bench/bench_eval_run.py                      # 400 items, 2 candidates, 3 runs
    python bench/bench_eval_run.py --items 1000 --runs 5 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402

from protege.evals.generate import RetryPolicy  # noqa: E402
from protege.evals.runs import RunSpec, create_run, execute_run  # noqa: E402
from protege.evals.report import render_report  # noqa: E402
from protege.evals.results import compute_results  # noqa: E402
from protege.store import Store  # noqa: E402
from tests.fakes.openai_upstream import start_fake_openai  # noqa: E402

WORDS = "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat".split()


def items(n: int) -> list[dict]:
    out = []
    for i in range(n):
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12))
        out.append({"messages": [{"role": "system", "content": "Repeat the user's text."}, {"role": "user", "content": text}],
                    "reference": text})
    return out


async def baseline(base_url: str, its: list[dict], models: list[str], concurrency: int) -> float:
    # one client per candidate, as Protege does
    clients = {m: openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) for m in models}
    sem = asyncio.Semaphore(concurrency)
    results = []

    async def one(item: dict, model: str) -> None:
        async with sem:
            resp = await clients[model].chat.completions.create(model=model, messages=item["messages"])
        results.append(resp.choices[0].message.content)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(it, m) for it in its for m in models))
    elapsed = time.perf_counter() - t0
    for client in clients.values():
        await client.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--delay", type=float, default=0.02, help="fake server latency per request (s)")
    args = ap.parse_args()
    fake = start_fake_openai(delay=args.delay)
    its = items(args.items)
    models = ["student-a", "student-b"]
    base, run_t, score_t, rep_t = [], [], [], {"json": [], "md": [], "html": []}
    tmp = Path(tempfile.mkdtemp())
    try:
        for r in range(args.runs):
            # interleave baseline and Protege so that machine noise hits both alike
            base.append(asyncio.run(baseline(fake.base_url, its, models, args.concurrency)))
            store = Store(str(tmp / f"b{r}.duckdb"))
            spec = RunSpec.from_dict({"candidates": [{"name": m, "model": m, "base_url": fake.base_url} for m in models],
                                      "items": its, "metrics": ["exact_match", "chrf"], "concurrency": args.concurrency,
                                      "n_resamples": 1000})
            run = create_run(store, spec)
            # generation ends when the last output is committed (the progress callback counts commits)
            marks: dict[str, float] = {}

            def progress(done: int, total: int) -> None:
                if done == total and "end" not in marks:
                    marks["end"] = time.perf_counter()

            t0 = time.perf_counter()
            asyncio.run(execute_run(store, run["id"], policy=RetryPolicy(), progress=progress))
            run_t.append(marks["end"] - t0)
            t1 = time.perf_counter()
            compute_results(store, run["id"])
            score_t.append(time.perf_counter() - t1)
            for fmt in rep_t:
                t2 = time.perf_counter()
                render_report(store, run["id"], fmt)
                rep_t[fmt].append(time.perf_counter() - t2)
            store.close()
    finally:
        fake.stop()
    med = statistics.median
    n_out = args.items * len(models)
    print(f"### Eval run ({args.items} items x {len(models)} candidates = {n_out} outputs, concurrency {args.concurrency}, "
          f"fake latency {args.delay * 1000:.0f} ms, median of {args.runs})\n")
    print(f"Machine: {platform.machine()}, Python {platform.python_version()}\n")
    print("| step | median | ratio |\n|---|---|---|")
    print(f"| baseline: AsyncOpenAI, same semaphore, no store | {med(base):.2f} s ({n_out / med(base):.0f} outputs/s) | 1.00 |")
    print(f"| protege generation (outputs group-committed to DuckDB) | {med(run_t):.2f} s ({n_out / med(run_t):.0f} outputs/s) | {med(run_t) / med(base):.2f} |")
    print(f"| scoring + bootstrap (exact_match, chrf, 3 systems, 1000 resamples) | {med(score_t):.2f} s | |")
    for fmt, ts in rep_t.items():
        print(f"| report {fmt} | {med(ts) * 1000:.0f} ms | |")


if __name__ == "__main__":
    main()
