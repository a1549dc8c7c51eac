"""Selecting captures with a metadata filter, as evals, auto and the dataset builder do.

    python bench/bench_selection.py --rows 200000 --runs 5

Until migration 7 these three callers filtered metadata with a semi-join on the side table
``completion_metadata``; they now use ``completion_filter``'s test on the row (``meta_pairs``), the
path the Stored API list already took. The rows are bench_store.py's (3 metadata pairs each, filled
into the side table too where it exists, so the same script times either schema). Baseline in the
same run: a plain ``count(*)`` over the completions table. Medians of ``--runs`` warm runs.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import generate  # noqa: E402

from protege.store import Store  # noqa: E402
from protege.store import auto as store_auto  # noqa: E402
from protege.store import evals as store_evals  # noqa: E402
from protege.store.datasets import Selection, prepare_selection  # noqa: E402


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="protege-bench-sel-"))
    store = Store(str(work / "b.duckdb"), data_dir=work / "data")
    try:
        generate(store, args.rows)
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("baseline: count(*) of all rows", lambda: store.cursor().execute("SELECT count(*) FROM completions").fetchone()),
            ("auto eligible_count, use_case=uc3 (5%)", lambda: store_auto.eligible_count(store, None, {"use_case": "uc3"})),
            ("auto eligible_count, env=prod (every row)", lambda: store_auto.eligible_count(store, None, {"env": "prod"})),
            ("evals select_completions, user=u42, limit 100", lambda: store_evals.select_completions(store, metadata={"user": "u42"}, limit=100)),
            ("evals select_completions, use_case=uc3, limit 100", lambda: store_evals.select_completions(store, metadata={"use_case": "uc3"}, limit=100)),
            ("datasets prepare_selection, use_case=uc3", lambda: prepare_selection(store, Selection(metadata={"use_case": "uc3"}))),
        ]
        results = [(name, median_ms(fn, args.runs)) for name, fn in cases]
        base = results[0][1]
        load = os.getloadavg()[0]
        print(f"`python bench/bench_selection.py --rows {args.rows} --runs {args.runs}`; {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}, load average {load:.1f}\n")
        print("| Case | Median | vs baseline |\n|---|---:|---:|")
        for name, ms in results:
            print(f"| {name} | {ms:.1f} ms | {ms / base:.1f}x |")
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
