"""Capture throughput into PostgreSQL through the proxy, against the DuckDB store in the same run.

Targets (issue 12): at 32 connections with capture on, a proxy on PostgreSQL >= 0.8x a proxy on a
DuckDB file; two replicas on one PostgreSQL database >= 1.5x one replica's total. Each run, in an
order that alternates: wrk at 32 connections against the DuckDB proxy, against one PostgreSQL
replica, then against two replicas at once (two wrk, 16 connections each, the same duration;
their requests/s added). Medians of ``--runs``; afterwards every answer must be stored exactly once:
rows in each store = requests wrk counted, plus those in flight when each wrk stopped (wrk does not
count them, the proxy answers and captures them: at most one per connection).

    python bench/bench_pg_proxy.py --runs 3 --duration 5

Everything (wrk, bench/fast_upstream.py, the proxies, PostgreSQL) shares this machine's CPUs, so on
a small machine two replicas compete with each other and with the database for the same cores:
the report prints the CPU count and load.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_proxy import drain, free_port, wait_port, wrk  # noqa: E402

from tests.postgres import PostgresServer  # noqa: E402


def start(db: str, data_dir: Path, port: int, up_port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "protege", "--db", db, "--data-dir", str(data_dir), "serve", "--port", str(port),
         "--upstream", f"http://127.0.0.1:{up_port}/v1"],
        env=env, cwd=str(data_dir.parent), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def rows(db: str) -> int:
    from protege.store import Store
    from protege.store import count

    s = Store(db, read_only=True)
    try:
        return count(s)
    finally:
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="protege-bench-pgproxy-"))
    server = PostgresServer()
    up_port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    upstream = subprocess.Popen([sys.executable, str(HERE / "fast_upstream.py"), str(up_port)], env=env)
    pg_url = server.database()
    duck_db = str(tmp / "bench.duckdb")
    procs: dict[str, tuple[int, subprocess.Popen]] = {}
    for name, db in (("duckdb", duck_db), ("pg_a", pg_url), ("pg_b", pg_url)):
        (tmp / name).mkdir()
        port = free_port()
        procs[name] = (port, start(db, tmp / name / "data", port, up_port))
    sent = {"duckdb": 0, "pg": 0}
    conns = {"duckdb": 0, "pg": 0}  # the most requests in flight when a wrk stops
    rps: dict[str, list[float]] = {"duckdb": [], "pg_one": [], "pg_two": []}

    def url(name: str) -> str:
        return f"http://127.0.0.1:{procs[name][0]}/v1/chat/completions"

    try:
        wait_port(up_port)
        for name, (port, _p) in procs.items():
            wait_port(port)
            sent["duckdb" if name == "duckdb" else "pg"] += wrk(url(name), 8, 1)[2]  # warm-up
            conns["duckdb" if name == "duckdb" else "pg"] += 8
            drain(port)
        for run in range(args.runs):
            order = ["duckdb", "pg_one", "pg_two"]
            for what in order if run % 2 == 0 else order[::-1]:
                if what == "duckdb":
                    r, _, n = wrk(url("duckdb"), 32, args.duration)
                    sent["duckdb"] += n
                    conns["duckdb"] += 32
                    drain(procs["duckdb"][0])
                elif what == "pg_one":
                    r, _, n = wrk(url("pg_a"), 32, args.duration)
                    sent["pg"] += n
                    conns["pg"] += 32
                    drain(procs["pg_a"][0])
                else:
                    with ThreadPoolExecutor(2) as pool:
                        got = list(pool.map(lambda nm: wrk(url(nm), 16, args.duration), ["pg_a", "pg_b"]))
                    r = sum(g[0] for g in got)
                    sent["pg"] += sum(g[2] for g in got)
                    conns["pg"] += 32
                    drain(procs["pg_a"][0])
                    drain(procs["pg_b"][0])
                rps[what].append(r)
            print(f"run {run + 1}: duckdb {rps['duckdb'][-1]:,.0f} req/s, postgresql one replica "
                  f"{rps['pg_one'][-1]:,.0f}, two replicas {rps['pg_two'][-1]:,.0f} (load {os.getloadavg()[0]:.1f})",
                  flush=True)
    finally:
        for _port, proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for _port, proc in procs.values():
            proc.wait(60)
        upstream.kill()
        upstream.wait()
    time.sleep(0.5)
    stored = {"duckdb": rows(duck_db), "pg": rows(pg_url)}
    server.stop()
    d, one, two = (statistics.median(rps[k]) for k in ("duckdb", "pg_one", "pg_two"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"runs {args.runs} x {args.duration} s")
    print(f"| 32 connections, capture on, req/s | {d:,.0f} (DuckDB) | {one:,.0f} (PostgreSQL) | {one / d:.2f} |")
    print(f"| two replicas on one database, req/s | {one:,.0f} (one) | {two:,.0f} (two) | {two / one:.2f} |")
    print(f"answers stored: duckdb {stored['duckdb']} rows for {sent['duckdb']} requests counted + "
          f"<= {conns['duckdb']} in flight at wrk's stops; postgresql {stored['pg']} rows for {sent['pg']} + <= {conns['pg']}")
    return 0 if all(sent[k] <= stored[k] <= sent[k] + conns[k] for k in sent) else 1


if __name__ == "__main__":
    raise SystemExit(main())
