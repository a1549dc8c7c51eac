"""Local student speed: training time on 50,000 examples and per-call serving latency.

Targets (2 cores): train on 50,000 short texts / ~20 labels in <= 30 s; served through the proxy at
>= 2,000 requests/s with median latency <= 2 ms.

Baselines measured in the same run: vectorising alone (the floor any TF-IDF model pays) and a
DummyClassifier for training; scikit-learn's ``Pipeline.predict`` on one text for serving (what the
fast path replaces). Medians of ``--runs`` runs.

Run:  python bench/bench_student.py [--runs 3] [--n 50000] [--calls 5000]
      python bench/bench_student.py --proxy [--duration 10] [--connections 32]   # needs wrk + the proxy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.dummy import DummyClassifier

ROOT = Path(__file__).resolve().parent.parent

LABELS = {
    "billing": "invoice charge refund payment bill charged twice credit card overcharged receipt",
    "shipping": "package delivery shipped tracking courier arrive late parcel lost address",
    "returns": "return exchange send back wrong size damaged item label replacement",
    "account": "password login account locked email username sign in reset profile",
    "technical": "error crash bug app freezes update install loading broken screen",
    "sales": "price quote discount bulk order buy purchase plan enterprise pricing",
    "cancel": "cancel subscription unsubscribe stop membership terminate end renewal",
    "feedback": "love great service thanks awesome happy recommend experience",
    "complaint": "terrible awful worst angry disappointed unacceptable rude never again",
    "privacy": "data delete personal information gdpr privacy consent tracking cookies",
    "security": "hacked fraud suspicious phishing unauthorized breach stolen scam",
    "hr": "vacation leave payroll salary benefits holiday manager contract",
    "legal": "lawyer contract terms dispute court liability agreement clause",
    "product": "feature size color material specification available stock model",
    "booking": "reservation appointment schedule booking reschedule slot calendar",
    "warranty": "warranty guarantee repair defect coverage claim years broken",
    "spam": "win prize free money click now offer limited winner lottery",
    "greeting": "hello hi good morning hey there how are you",
    "partnership": "partner collaboration affiliate reseller integration api proposal",
    "other": "question random weather general something wondering curious misc",
}
FILLER = (
    "i my the a to is it please can you help me with this that for on was have not "
    "been why how when what today yesterday order again still just really need want"
).split()


def synthetic(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short support-ticket-like texts: 1-3 label words among 4-12 shared words, some label noise."""
    rng = random.Random(seed)
    names = list(LABELS)
    vocab = {k: v.split() for k, v in LABELS.items()}
    out = []
    for _ in range(n):
        label = rng.choice(names)
        words = rng.choices(FILLER, k=rng.randint(4, 12)) + rng.choices(vocab[label], k=rng.randint(1, 3))
        if rng.random() < 0.15:  # a word from another topic
            words += rng.choices(vocab[rng.choice(names)], k=1)
        rng.shuffle(words)
        text = " ".join(words)
        if rng.random() < 0.1:  # a typo
            i = rng.randrange(len(text))
            text = text[:i] + text[i + 1 :]
        out.append((text, json.dumps({"label": label})))
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, scikit-learn {sklearn.__version__}"


def bench_training(n: int, runs: int) -> dict:
    from protege.distill.finetune.local_student import make_pipeline, normalise_label, train

    pairs = synthetic(n)
    texts = [t for t, _ in pairs]
    labels = [normalise_label(a) for _, a in pairs]
    vec_s, dummy_s, train_s, cpu_s, accs, default_s, default_accs = [], [], [], [], [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        make_pipeline().named_steps["features"].fit_transform(texts)
        vec_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        DummyClassifier(strategy="most_frequent").fit(np.zeros((len(labels), 1)), labels)
        dummy_s.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        student = train(pairs, random_state=0)  # includes normalising, templates, 10% holdout metrics, model selection
        train_s.append(time.perf_counter() - t0)
        cpu_s.append(time.process_time() - c0)
        accs.append(student.metrics["validation_accuracy"])
        t0 = time.perf_counter()
        fixed = train(pairs, random_state=0, select=False)  # the one fixed configuration, as before selection
        default_s.append(time.perf_counter() - t0)
        default_accs.append(fixed.metrics["validation_accuracy"])
    return {
        "n": n,
        "labels": len(set(labels)),
        "train_s": statistics.median(train_s),
        "train_cpu_s": statistics.median(cpu_s),
        "vectorise_s": statistics.median(vec_s),
        "dummy_s": statistics.median(dummy_s),
        "accuracy": statistics.median(accs),
        "majority": student.metrics["majority_baseline_accuracy"],
        "default_s": statistics.median(default_s),
        "default_accuracy": statistics.median(default_accs),
        "chosen": student.metrics["model"],
        "student": student,
    }


def bench_serving(student, calls: int, runs: int) -> dict:
    """StudentRegistry.complete per call (distinct texts: no cache hits) vs Pipeline.predict on one text."""
    from protege.distill.finetune.local_student import save_student
    from protege.distill.finetune.students import StudentRegistry
    from protege.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="bench-student-"))
    store = Store(str(tmp / "b.duckdb"), data_dir=tmp / "data")
    try:
        save_student(store, "bench", student)
        reg = StudentRegistry(store)
        texts = [t for t, _ in synthetic(calls * runs + 100, seed=1)]
        bodies = [{"model": "protege/bench", "messages": [{"role": "user", "content": t}]} for t in texts]
        reg.complete(bodies[-1])  # load once
        med, p99, base_med = [], [], []
        for r in range(runs):
            lat = []
            for body in bodies[r * calls : (r + 1) * calls]:
                t0 = time.perf_counter()
                reg.complete(body)
                lat.append(time.perf_counter() - t0)
            lat.sort()
            med.append(lat[len(lat) // 2] * 1000)
            p99.append(lat[int(len(lat) * 0.99)] * 1000)
            base = []
            for t in texts[r * calls : r * calls + min(calls, 1000)]:
                t0 = time.perf_counter()
                student.pipeline.predict([t])
                base.append(time.perf_counter() - t0)
            base.sort()
            base_med.append(base[len(base) // 2] * 1000)
        return {"median_ms": statistics.median(med), "p99_ms": statistics.median(p99), "pipeline_ms": statistics.median(base_med)}
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# PROXY-LEVEL MEASUREMENT (for the lead): the student served by `protege serve`, driven by wrk.
# ---------------------------------------------------------------------------------------------
def bench_proxy_wrk(student, duration: int = 10, connections: int = 32, threads: int = 1) -> dict:
    """Train-free: saves ``student`` into a fresh DuckDB, starts ``protege serve`` on it (a separate
    process: one process owns the file), and drives POST /v1/chat/completions with model
    ``protege/bench`` using wrk. Returns requests/s and wrk's median latency."""
    from protege.distill.finetune.local_student import save_student
    from protege.store import Store

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-student-proxy-"))
    db = tmp / "p.duckdb"
    store = Store(str(db), data_dir=tmp / "data")
    save_student(store, "bench", student)
    store.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    lua = tmp / "post_student.lua"
    body = json.dumps({"model": "protege/bench", "messages": [{"role": "user", "content": "my invoice was charged twice please refund"}]})
    lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                   'wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"\n' f"wrk.body = '{body}'\n")
    env = dict(os.environ, PROTEGE_UPSTREAM="http://127.0.0.1:9/v1")
    server = subprocess.Popen(
        [sys.executable, "-m", "protege", "--db", str(db), "--data-dir", str(tmp / "data"), "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("protege serve did not start: " + (server.stderr.read().decode()[-2000:] if server.poll() is not None else "timeout"))
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        subprocess.run(["wrk", "-t1", "-c4", "-d2s", "-s", str(lua), url], capture_output=True, check=True)  # warm-up
        def run(c: int) -> tuple[float, float, int]:
            out = subprocess.run(
                ["wrk", f"-t{threads}", f"-c{c}", f"-d{duration}s", "--latency", "-s", str(lua), url],
                capture_output=True, text=True, check=True,
            ).stdout
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            m = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
            median = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
            return rps, median, int(non2xx.group(1)) if non2xx else 0

        rps, median, bad = run(connections)
        rps1, median1, bad1 = run(1)
        return {"rps": rps, "median_ms": median, "non_2xx": bad + bad1, "connections": connections, "rps_c1": rps1, "median_ms_c1": median1}
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5_000)
    ap.add_argument("--proxy", action="store_true", help="also measure through `protege serve` with wrk")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()

    tr = bench_training(args.n, args.runs)
    sv = bench_serving(tr["student"], args.calls, args.runs)
    px = bench_proxy_wrk(tr["student"], args.duration, args.connections) if args.proxy else None

    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    lines = [
        "### Local student (bench/bench_student.py)",
        "",
        f"`{cmd}` — {machine()}; medians of {args.runs} runs",
        "",
        "| measure | result | baseline (same run) | target |",
        "|---|---|---|---|",
        f"| train on {tr['n']:,} examples, {tr['labels']} labels | {tr['train_s']:.2f} s wall ({tr['train_cpu_s']:.1f} s CPU) | vectorise only {tr['vectorise_s']:.2f} s "
        f"(x{tr['train_s'] / tr['vectorise_s']:.2f}); DummyClassifier {tr['dummy_s'] * 1000:.1f} ms | <= 30 s |",
        f"| model selection on the validation split (chose {', '.join(f'{k}={v}' for k, v in tr['chosen'].items())}) | "
        f"train {tr['train_s']:.2f} s, holdout accuracy {tr['accuracy']:.3f} | fixed default config: {tr['default_s']:.2f} s "
        f"(x{tr['train_s'] / tr['default_s']:.2f}), accuracy {tr['default_accuracy']:.3f} | <= 30 s |",
        f"| holdout accuracy | {tr['accuracy']:.3f} | majority class {tr['majority']:.3f} | - |",
        f"| `StudentRegistry.complete` per call | median {sv['median_ms']:.3f} ms, p99 {sv['p99_ms']:.3f} ms "
        f"(~{1000 / sv['median_ms']:,.0f} calls/s on one thread) | `Pipeline.predict` one text {sv['pipeline_ms']:.3f} ms "
        f"(x{sv['pipeline_ms'] / sv['median_ms']:.1f} slower) | median <= 2 ms |",
    ]
    if px is not None:
        lines.append(
            f"| through the proxy, wrk -c{px['connections']} | {px['rps']:,.0f} req/s, median {px['median_ms']:.2f} ms"
            f"{', non-2xx ' + str(px['non_2xx']) if px['non_2xx'] else ''} | - | >= 2,000 req/s |"
        )
        lines.append(f"| through the proxy, wrk -c1 | median {px['median_ms_c1']:.2f} ms ({px['rps_c1']:,.0f} req/s) | - | median <= 2 ms |")
    else:
        lines.append("| through the proxy | not run (use `--proxy`; needs wrk) | - | >= 2,000 req/s, median <= 2 ms |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
