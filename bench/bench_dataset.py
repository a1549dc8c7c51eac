"""Benchmark: build a fine-tuning dataset from 1,000,000 stored completions.

Target (issue): filters, exact dedupe, PII scrub, split and validation over 1M captures in <= 60 s
on a 2-core machine. The rows are generated with DuckDB SQL straight into the completions table
(2-4 messages, a shared system prompt, ~15% with PII, ~5% duplicates, ~3% truncated, ~2% failed,
~1% refusals). Baselines, measured in the same run on the same rows:

- ``export_python``: stream the same selected rows out of DuckDB in Arrow batches and write one
  JSONL line per row (request + response as stored) -- what any "export" costs in Python;
- ``export_duckdb``: DuckDB's own ``COPY ... TO 'x.jsonl'`` of the same rows (C++, all cores).

Near-duplicate removal is opt-in and excluded from the timing (it holds every text in memory).

    python bench/bench_dataset.py                # 1,000,000 rows, 3 runs
    python bench/bench_dataset.py --rows 200000 --runs 3
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

import orjson
from protege.distill.datasets.builder import DatasetOptions, build_dataset
from protege.store import COLUMNS, Store

SYSTEM_PROMPTS = [
    "You are the support assistant of ACME Corp. Answer customer questions politely and concisely. "
    "Always follow the company policy: never promise refunds, escalate legal issues, keep answers under "
    "120 words, use plain language, and when unsure say that a human agent will follow up. " * 2,
    "You are a ticket classifier. Read the customer's message and answer with exactly one label from: "
    "billing, technical, account, shipping, other. Do not explain your answer. " * 2,
    "You translate customer messages into formal English without changing their meaning.",
]
PHRASES = [
    "my invoice shows a charge I do not recognise, can you explain it?",
    "the app crashes every time I open the settings page on my phone",
    "how do I change the email address on my account",
    "my parcel has not arrived yet and the tracking page has not changed for days",
    "I would like to cancel my subscription at the end of this month",
    "the export to CSV produces an empty file since the last update",
    "can I get an invoice with my company's VAT number on it",
    "I forgot my password and the reset link does not work",
]


PT = "(60 + length(user_text) // 4 + length(sys) // 4)"
CT = "(length(answer) // 4)"
_EXPR = {
    "seq": "i",
    "id": "'chatcmpl-' || i",
    "created": "1700000000 + i",
    "started_at": "1700000000.0 + i",
    "finished_at": "1700000000.5 + i",
    "model_requested": "CASE WHEN i % 10 = 9 THEN 'gpt-4o-mini' ELSE 'gpt-4o' END",
    "model": "CASE WHEN i % 10 = 9 THEN 'gpt-4o-mini-2024-07-18' ELSE 'gpt-4o-2024-08-06' END",
    "request": """to_json({
        model: 'gpt-4o',
        messages: list_concat(
            [{role: 'system', content: sys}],
            CASE WHEN k % 3 = 0 THEN [{role: 'user', content: 'Hello'}, {role: 'assistant', content: 'Hi! How can I help you today?'}] ELSE [] END,
            [{role: 'user', content: user_text}]
        ),
        temperature: 0.2
    })::VARCHAR""",
    "response": f"""CASE WHEN i % 50 = 1 THEN NULL ELSE to_json({{
        id: 'chatcmpl-' || i, object: 'chat.completion', created: 1700000000 + i, model: 'gpt-4o-2024-08-06',
        choices: [{{index: 0, message: {{role: 'assistant', content: answer, refusal: NULL}},
                    finish_reason: CASE WHEN i % 33 = 0 THEN 'length' ELSE 'stop' END}}],
        usage: {{prompt_tokens: {PT}, completion_tokens: {CT}, total_tokens: {PT} + {CT}}}
    }})::VARCHAR END""",
    "metadata": "'{\"app\":\"support\",\"session\":\"s' || (k // 5) || '\"}'",
    "store": "true",
    "status_code": "CASE WHEN i % 50 = 1 THEN 500 ELSE 200 END",
    "outcome": "CASE WHEN i % 50 = 1 THEN 'upstream_error' ELSE 'ok' END",
    "latency_ms": "800.0",
    "prompt_tokens": PT,
    "completion_tokens": CT,
    "total_tokens": f"{PT} + {CT}",
    "finish_reason": "CASE WHEN i % 50 = 1 THEN NULL WHEN i % 33 = 0 THEN 'length' ELSE 'stop' END",
    "stream": "false",
    "upstream": "'https://api.openai.com/v1'",
    "request_id": "'req_' || i",
    "source": "'proxy'",
}


def generate(store: Store, rows: int) -> float:
    """Insert ``rows`` synthetic captures with one SQL statement. Returns seconds."""
    t0 = time.perf_counter()
    cur = store.cursor()
    cur.execute("CREATE OR REPLACE TEMP TABLE _sys AS SELECT unnest(?) AS s, generate_subscripts(?, 1) - 1 AS i", [SYSTEM_PROMPTS, SYSTEM_PROMPTS])
    cur.execute("CREATE OR REPLACE TEMP TABLE _ph AS SELECT unnest(?) AS p, generate_subscripts(?, 1) - 1 AS i", [PHRASES, PHRASES])
    cols = ", ".join(COLUMNS)
    # Columns added by later migrations get NULL (or their default) here.
    select = ", ".join(f"{_EXPR.get(c, 'NULL')} AS {c}" for c in COLUMNS)
    cur.execute(
        f"""
        INSERT INTO completions ({cols})
        WITH base AS (
            SELECT i, CASE WHEN i % 20 = 0 THEN i - 2 ELSE i END AS k FROM range(1, ? + 1) t(i)
        ), parts AS (
            SELECT i, k,
                (SELECT s FROM _sys WHERE _sys.i = CASE WHEN k % 10 < 8 THEN 0 WHEN k % 10 = 8 THEN 1 ELSE 2 END) AS sys,
                'Ticket ' || k || ': ' || (SELECT p FROM _ph WHERE _ph.i = k % 8) ||
                CASE k % 20 WHEN 0 THEN ' You can reach me at customer' || k || '@example.com.'
                            WHEN 1 THEN ' Call me back on +1 555 ' || lpad(CAST(k % 1000 AS VARCHAR), 3, '0') || ' ' || lpad(CAST(k % 10000 AS VARCHAR), 4, '0') || '.'
                            WHEN 2 THEN ' My card is 4111 1111 1111 1111, please check.'
                            ELSE '' END AS user_text,
                CASE WHEN k % 97 = 0 THEN 'I''m sorry, but I can''t help with that.'
                     ELSE 'Thanks for reaching out about ticket ' || k || '. ' ||
                          'I have looked into it: this usually happens after an update, and the fix is to sign out, '
                          'clear the cache and sign in again. If it persists, a human agent will follow up within one day.'
                END AS answer
            FROM base
        )
        SELECT {select}
        FROM parts
        """,
        [rows],
    )
    store.conn.execute("CHECKPOINT")
    return time.perf_counter() - t0


def export_python(store: Store, path: Path) -> float:
    """Baseline: the same selected rows streamed to JSONL as stored (no cleaning at all)."""
    t0 = time.perf_counter()
    cur = store.cursor()
    reader = cur.sql(
        "SELECT request, response FROM completions WHERE outcome = 'ok' AND response IS NOT NULL "
        "AND (model = 'gpt-4o-2024-08-06' OR model_requested = 'gpt-4o') ORDER BY seq"
    ).to_arrow_reader(20_000)
    with open(path, "wb", buffering=1 << 20) as fh:
        for batch in reader:
            reqs = batch.column(0).to_pylist()
            resps = batch.column(1).to_pylist()
            fh.writelines(orjson.dumps({"request": req, "response": resp}) + b"\n" for req, resp in zip(reqs, resps))
    return time.perf_counter() - t0


def export_duckdb(store: Store, path: Path) -> float:
    t0 = time.perf_counter()
    store.cursor().execute(
        f"COPY (SELECT request, response FROM completions WHERE outcome = 'ok' AND response IS NOT NULL "
        f"AND (model = 'gpt-4o-2024-08-06' OR model_requested = 'gpt-4o') ORDER BY seq) TO '{path}' (FORMAT JSON)"
    )
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir, removed afterwards)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="protege-bench-ds-"))
    work.mkdir(parents=True, exist_ok=True)
    store = Store(str(work / "bench.duckdb"), data_dir=work / "data")
    try:
        gen_s = generate(store, args.rows)
        print(f"generated {args.rows:,} rows in {gen_s:.1f}s", file=sys.stderr)
        opts = DatasetOptions(name="bench", models=["gpt-4o"], validation_fraction=0.1, seed=1)
        build_s, py_s, db_s = [], [], []
        last = None
        for run in range(args.runs):
            py_s.append(export_python(store, work / "export.jsonl"))
            db_s.append(export_duckdb(store, work / "export_duckdb.jsonl"))
            t0 = time.perf_counter()
            last = build_dataset(store, opts)
            build_s.append(time.perf_counter() - t0)
            print(f"run {run + 1}: build {build_s[-1]:.1f}s {last.stats['timings']}, python export {py_s[-1]:.1f}s, duckdb export {db_s[-1]:.1f}s", file=sys.stderr)
            shutil.rmtree(Path(last.files["train"]["path"]).parent, ignore_errors=True)
        b, p, d = statistics.median(build_s), statistics.median(py_s), statistics.median(db_s)
        cpu = platform.processor() or platform.machine()
        print(
            f"""
### bench_dataset: build a dataset from {args.rows:,} stored completions

Command: `python bench/bench_dataset.py --rows {args.rows} --runs {args.runs}`
Machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()}

| What (median of {args.runs}) | Seconds | build ÷ this |
|---|---:|---:|
| **build_dataset** (filters + exact dedupe in SQL, scrub, split, validation, card, links) | **{b:.1f}** | 1.00 |
| baseline: Python JSONL export of the same rows (no cleaning) | {p:.1f} | {b / p:.2f}x |
| baseline: DuckDB `COPY ... (FORMAT JSON)` of the same rows | {d:.1f} | {b / d:.2f}x |

Target: <= 60 s for 1M rows. All runs (s): build {', '.join(f'{x:.1f}' for x in build_s)}; python export {', '.join(f'{x:.1f}' for x in py_s)}; duckdb export {', '.join(f'{x:.1f}' for x in db_s)}.
Counts (last run): {orjson.dumps(last.counts).decode() if last else '-'}; PII-scrubbed examples: {last.stats['scrub']['examples_changed'] if last else '-'}.
Build phases (last run, s): {last.stats['timings'] if last else '-'} (sql = filters + exact dedupe + scrub pre-check in DuckDB; examples = Python: parse, clean, scrub, validate, write).
Near-duplicate removal (opt-in) is not included.
"""
        )
    finally:
        store.close()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
