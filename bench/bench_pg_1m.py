"""Issue 12's 1,000,000-row targets on the PostgreSQL store, each against a baseline measured in the
same run on the same rows (the DuckDB store holding them), medians of ``--runs``.

    python bench/bench_pg_1m.py                          # 1,000,000 rows, 3 runs, kept in /tmp
    python bench/bench_pg_1m.py --rows 100000 --runs 2   # quick

The rows are bench/bench_dataset.py's synthetic captures (~1.6 KB, 2-4 messages), with metadata
``{"app": "support" (every row), "env": "dev" (10 %) | "prod", "session": "s<n>" (5 rows each)}``.
They are built once into a DuckDB file and copied once into PostgreSQL with ``copy_store`` (the
build's rate is reported: the 1M-row `store copy` figure), both kept in ``--dir`` with the
PostgreSQL cluster's data directory, so a later run reuses them (``--fresh`` rebuilds).

Figures:
- ``store copy`` DuckDB -> PostgreSQL, completions/s, on a ``--copy-rows`` slice into a fresh
  database each run; baseline: the same copy DuckDB -> DuckDB (target >= 20,000/s);
- ``list_stored`` with a metadata filter over the 1M rows, ms per page of 20 (target <= 100 ms);
  baseline: the DuckDB store;
- ``build_dataset`` from the 1M rows, seconds (target <= 60 s); baseline: the DuckDB store. Each
  build prints its phases (the dataset's ``stats["timings"]``: sql, examples, split_and_files), and
  each run whether both stores wrote the same train/validation files (their sha256).
The PostgreSQL server is tests/postgres.py's (fsync off, 127.0.0.1, the default 128 MB of shared
buffers): it shares the machine's CPUs with this process.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
from bench_dataset import generate  # noqa: E402

from protege.distill.datasets.builder import DatasetOptions, build_dataset  # noqa: E402
from protege.store import Store, copy_store, list_stored  # noqa: E402
from protege.store import META_PAIRS  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

METADATA = (
    """'{"app":"support","env":"' || CASE WHEN seq % 10 = 0 THEN 'dev' ELSE 'prod' END || """
    """'","session":"s' || (seq // 5) || '"}'"""
)
QUERIES = [
    ("env=dev (10 %)", {"metadata": {"env": "dev"}}),
    ("env=dev desc", {"metadata": {"env": "dev"}, "order": "desc"}),
    ("app=support (every row)", {"metadata": {"app": "support"}}),
    ("session=s77777 (5 rows)", {"metadata": {"session": "s77777"}}),
    ("env=prod + session (5)", {"metadata": {"env": "prod", "session": "s12345"}}),
    ("no filter", {}),
]


class KeptServer(PostgresServer):
    """tests/postgres.py's server on a data directory that outlives the run (initdb once)."""

    def __init__(self, root: Path) -> None:  # noqa: D107 - see the class
        if not (root / "data" / "PG_VERSION").exists():
            tmp = PostgresServer()  # initdb in its own directory, then moved here
            tmp.pause()
            shutil.rmtree(root, ignore_errors=True)
            shutil.move(str(tmp.root), str(root))
        self.root, self.data = root, root / "data"
        self._prefix = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("nobody")
            self._prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        self._databases = int(time.time())
        from tests.postgres import _free_port

        for _ in range(5):
            self.port = _free_port()
            if self._start():
                break
        else:
            raise RuntimeError((root / "log").read_text()[-2000:])
        self.url = f"postgresql://protege@127.0.0.1:{self.port}"

    def named(self, name: str) -> tuple[str, bool]:
        """The URL of database ``name``, and whether it had to be created."""
        with psycopg.connect(self.url + "/postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return f"{self.url}/{name}", not exists

    def drop(self, url: str) -> None:
        with psycopg.connect(self.url + "/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]}")

    def close(self) -> None:
        self.pause()


def build_duckdb(path: Path, rows: int) -> None:
    store = Store(str(path), data_dir=path.parent / "duck-data")
    generate(store, rows)
    store.cursor().execute(
        f"UPDATE completions SET metadata = {METADATA}, "
        f"meta_pairs = {META_PAIRS.format(col=METADATA)}"
    )
    store.close()


def list_ms(store: Store, kw: dict) -> float:
    times = []
    for _ in range(7):
        t = time.perf_counter()
        page = list_stored(store, limit=20, **kw)
        times.append((time.perf_counter() - t) * 1000)
    assert page.data or "session" in str(kw), kw
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--copy-rows", type=int, default=200_000, help="rows of each timed copy run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--build-runs", type=int, default=None, help="dataset builds (default --runs)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "protege-bench-pg1m")
    ap.add_argument("--fresh", action="store_true", help="rebuild the kept stores")
    ap.add_argument("--skip", default="", help="comma-separated: copy,list,build")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work: Path = args.dir
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    src_path = work / f"src-{args.rows}.duckdb"
    if not src_path.exists():
        t = time.perf_counter()
        build_duckdb(src_path, args.rows)
        print(f"built the DuckDB store ({args.rows:,} rows) in {time.perf_counter() - t:.1f} s", flush=True)
    server = KeptServer(work / "pg")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"python {platform.python_version()}", flush=True)
    try:
        duck = Store(str(src_path), read_only=True)
        url, created = server.named(f"big{args.rows}")
        pg = Store(url, data_dir=work / "pg-data")
        if created or pg.cursor().execute("SELECT count(*) FROM completions").fetchone()[0] < args.rows:
            t = time.perf_counter()
            copy_store(duck, pg)
            s = time.perf_counter() - t
            print(f"copied {args.rows:,} rows into PostgreSQL in {s:.1f} s: {args.rows / s:,.0f} completions/s", flush=True)
            pg.cursor().execute("VACUUM ANALYZE completions")

        if "copy" not in skip:
            part = work / f"part-{args.copy_rows}.duckdb"
            if not part.exists():
                build_duckdb(part, args.copy_rows)
            part_store = Store(str(part), read_only=True)
            pg_rates, duck_rates = [], []
            for run in range(args.runs):
                dst_url, _ = server.named(f"copy{run}_{int(time.time())}")
                dst = Store(dst_url, data_dir=work / "c")
                t = time.perf_counter()
                n = copy_store(part_store, dst).copied["completions"]
                pg_rates.append(n / (time.perf_counter() - t))
                dst.close()
                server.drop(dst_url)
                target = work / "copy-dst.duckdb"
                target.unlink(missing_ok=True)
                dd = Store(str(target), data_dir=work / "c")
                t = time.perf_counter()
                n = copy_store(part_store, dd).copied["completions"]
                duck_rates.append(n / (time.perf_counter() - t))
                dd.close()
                print(f"copy run {run + 1}: postgresql {pg_rates[-1]:,.0f}/s, duckdb {duck_rates[-1]:,.0f}/s", flush=True)
            part_store.close()
            p, d = statistics.median(pg_rates), statistics.median(duck_rates)
            print(f"| store copy of {args.copy_rows:,} rows, completions/s | {d:,.0f} (DuckDB -> DuckDB) | "
                  f"{p:,.0f} (DuckDB -> PostgreSQL) | {p / d:.2f} |", flush=True)

        if "list" not in skip:
            for name, kw in QUERIES:
                runs_pg = [list_ms(pg, kw) for _ in range(args.runs)]
                runs_duck = [list_ms(duck, kw) for _ in range(args.runs)]
                p, d = statistics.median(runs_pg), statistics.median(runs_duck)
                print(f"| list_stored {name}, ms | {d:.1f} | {p:.1f} | {p / d:.2f} |", flush=True)

        if "build" not in skip:
            opts = DatasetOptions(name="bench", models=["gpt-4o"], validation_fraction=0.1, seed=1)
            pg_s, duck_s = [], []
            duck.close()
            writable = Store(str(src_path), data_dir=work / "duck-data")
            for run in range(args.build_runs or args.runs):
                hashes = []
                for store, out in ((pg, pg_s), (writable, duck_s)):
                    t = time.perf_counter()
                    ds = build_dataset(store, opts)
                    out.append(time.perf_counter() - t)
                    print(f"  {store.dialect.name} phases (s): {ds.stats['timings']}", flush=True)
                    hashes.append({k: f["sha256"] for k, f in ds.files.items() if k != "card"})
                    shutil.rmtree(Path(ds.files["train"]["path"]).parent, ignore_errors=True)
                print(f"build run {run + 1}: postgresql {pg_s[-1]:.1f} s, duckdb {duck_s[-1]:.1f} s "
                      f"(counts {ds.counts}; same files on both: {hashes[0] == hashes[1]})", flush=True)
            p, d = statistics.median(pg_s), statistics.median(duck_s)
            print(f"| build_dataset from {args.rows:,}, s | {d:.1f} | {p:.1f} | {p / d:.2f} |", flush=True)
            writable.close()
        else:
            duck.close()
        pg.close()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
