"""Route lookup cost and rollout overhead on the proxy's hot path.

1. ``StoreRouter.route()`` per call with 10 / 100 / 1000 active routes (a matching and a
   non-matching lookup), against a plain ``dict.get`` as the floor.
2. Median client latency through the real proxy (uvicorn on 127.0.0.1, fake teacher on 127.0.0.1)
   with no router vs a 1000-route table that does not match the request, and vs a *shadow* route
   that does match (the student call happens after the answer is sent). Configurations alternate
   round by round in the same run; medians of the per-round medians.

    python bench/bench_routing.py [--rounds 5] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _routes(store, n: int, model: str = "gpt-4o-mini") -> None:
    from protege.store import auto as store_auto

    for i in range(n):
        # distinct policies (one live route each), distinct metadata, a few on other models
        store_auto.create_route(store, f"policy_{i}", f"protege/s{i}", "canary", match_model=model if i % 3 else f"other-{i}",
                                match_metadata={"task": f"task-{i}"}, percent=10.0)


def bench_lookup(n_routes: int, calls: int = 200_000) -> dict[str, float]:
    from protege.distill.auto.routing import StoreRouter
    from protege.store import Store

    store = Store(":memory:")
    _routes(store, n_routes)
    router = StoreRouter(store)
    hit_md = {"task": f"task-{n_routes - 1}", "user": "u1"}
    miss_md = {"task": "nothing-routes-this", "user": "u1"}
    model = "gpt-4o-mini" if (n_routes - 1) % 3 else f"other-{n_routes - 1}"
    assert router.route(model, hit_md) is not None and router.route("gpt-4o-mini", miss_md) is None
    table = {("gpt-4o-mini", "task", "x"): 1}

    def per_call(fn) -> float:
        reps = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls // 5):
                fn()
            reps.append((time.perf_counter() - t0) / (calls // 5))
        return statistics.median(reps) * 1e6

    out = {
        "dict_get_us": per_call(lambda: table.get(("gpt-4o-mini", "task", "y"))),
        "hit_us": per_call(lambda: router.route(model, hit_md)),
        "miss_us": per_call(lambda: router.route("gpt-4o-mini", miss_md)),
    }
    store.close()
    return out


class _Server:
    def __init__(self, db: str, upstream: str, router_kind: str) -> None:
        import uvicorn
        from protege.distill.auto.routing import StoreRouter
        from protege.proxy import create_app
        from protege.store import CaptureWriter, Store
        from protege.store import auto as store_auto

        from protege.settings import Settings

        settings = Settings(db=db, upstream=upstream, flush_interval=0.01)
        self.store = Store(db)
        writer = CaptureWriter(self.store, max_queue=settings.queue_size, batch_size=settings.batch_size, flush_interval=0.01)
        router = None
        if router_kind == "nomatch":
            _routes(self.store, 1000)
            router = StoreRouter(self.store)
        elif router_kind == "shadow":
            store_auto.create_route(self.store, "policy_shadow", "student-model", "shadow", match_model="gpt-4o-mini",
                                    match_metadata={"task": "bench"}, percent=0.0, timeout=5.0)
            router = StoreRouter(self.store)
        app = create_app(settings, self.store, writer, router=router)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, loop="uvloop", http="httptools",
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}/v1/chat/completions"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def bench_proxy(rounds: int, requests: int, gap: float = 0.005) -> dict[str, dict[str, float]]:
    import httpx2 as httpx

    from tests.fakes.openai_upstream import start_fake_openai

    teacher = start_fake_openai(lambda body: '{"label": "tech"}')
    tmp = tempfile.mkdtemp(prefix="bench-routing-")
    servers = {kind: _Server(os.path.join(tmp, f"{kind}.duckdb"), teacher.base_url, kind) for kind in ("none", "nomatch", "shadow")}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "my laptop does not boot"}], "metadata": {"task": "bench"}}
    # (label, server, pause between requests): back to back, and paced so background work can finish
    configs = [("none", "none", 0.0), ("nomatch", "nomatch", 0.0), ("shadow", "shadow", 0.0),
               ("none_paced", "none", gap), ("shadow_paced", "shadow", gap)]
    per_round: dict[str, list[float]] = {c[0]: [] for c in configs}
    served: dict[str, set] = {k: set() for k in servers}
    try:
        with httpx.Client(headers={"Authorization": "Bearer sk-bench"}, timeout=30) as client:
            for kind, srv in servers.items():  # warm-up
                for _ in range(50):
                    client.post(srv.url, json=body)
            for _ in range(rounds):
                for label, kind, pause in configs:
                    srv = servers[kind]
                    lat = []
                    for _ in range(requests):
                        t0 = time.perf_counter()
                        r = client.post(srv.url, json=body)
                        lat.append(time.perf_counter() - t0)
                        served[kind].add(r.headers.get("x-protege-served-by"))
                        if pause:
                            time.sleep(pause)
                    per_round[label].append(statistics.median(lat) * 1000)
        time.sleep(0.5)
        shadow_rows = servers["shadow"].store.cursor().execute("SELECT count(*) FROM completions WHERE source = 'shadow'").fetchone()[0]
    finally:
        for srv in servers.values():
            srv.stop()
        teacher.stop()
    out = {k: {"median_ms": statistics.median(v), "rounds": v} for k, v in per_round.items()}
    out["shadow"]["shadow_captures"] = float(shadow_rows)
    out["served_by"] = {k: sorted(x for x in v if x) for k, v in served.items()}  # type: ignore[assignment]
    return out


def bench_proxy_wrk(rounds: int, duration: int) -> dict[str, list[float]]:
    """The same comparison with nothing else in the proxy's process: each configuration is a
    ``protege serve`` subprocess over its own DuckDB file (routes written there beforehand), the
    upstream is bench/fast_upstream.py in its own process, and wrk (C, one connection) is the
    client, back to back and paced 5 ms apart. Median latency as wrk reports it."""
    import re
    import shutil
    import signal
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_proxy import drain, free_port, wait_port

    from protege.store import Store
    from protege.store import auto as store_auto

    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: install it with `apt-get install -y wrk`")
    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="bench-routing-wrk-"))
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("OPENAI_API_KEY", None)
    up_port = free_port()
    procs = [subprocess.Popen([sys.executable, str(root / "bench" / "fast_upstream.py"), str(up_port)], env=env)]
    ports: dict[str, int] = {}
    for kind in ("none", "nomatch", "shadow"):
        db = tmp / f"{kind}.duckdb"
        store = Store(str(db))
        if kind == "nomatch":
            _routes(store, 1000)
        elif kind == "shadow":  # matches bench/post_chat.lua's request
            store_auto.create_route(store, "policy_shadow", "student-model", "shadow", match_model="gpt-4o-mini",
                                    match_metadata={"bench": "proxy"}, percent=0.0, timeout=5.0)
        store.close()
        ports[kind] = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "protege", "--db", str(db), "serve", "--port", str(ports[kind]),
             "--upstream", f"http://127.0.0.1:{up_port}/v1"], env=env, cwd=str(root)))

    def latency(port: int, lua: str) -> float:
        out = subprocess.run(["wrk", "-t1", "-c1", f"-d{duration}s", "--latency", "-s", lua,
                              f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True,
                             check=True, cwd=str(root)).stdout
        m = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    configs = [("none", "none", "bench/post_chat.lua"), ("nomatch", "nomatch", "bench/post_chat.lua"),
               ("shadow", "shadow", "bench/post_chat.lua"), ("none_paced", "none", "bench/post_chat_paced.lua"),
               ("shadow_paced", "shadow", "bench/post_chat_paced.lua")]
    out: dict[str, list[float]] = {c[0]: [] for c in configs}
    try:
        wait_port(up_port)
        for port in ports.values():
            wait_port(port)
            latency(port, "bench/post_chat.lua")  # warm-up
            drain(port)
        for _ in range(rounds):
            for label, kind, lua in configs:
                out[label].append(latency(ports[kind], lua))
                drain(ports[kind])
    finally:
        for p in procs[1:]:
            p.send_signal(signal.SIGTERM)
        for p in procs[1:]:
            p.wait(60)
        procs[0].kill()
        procs[0].wait()
    store = Store(str(tmp / "shadow.duckdb"), read_only=True)
    shadows = store.cursor().execute("SELECT count(*) FROM completions WHERE source = 'shadow'").fetchone()[0]
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    out["shadow_captures"] = [float(shadows)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--skip-proxy", action="store_true")
    ap.add_argument("--wrk-duration", type=int, default=3, help="seconds per wrk run (subprocess comparison)")
    args = ap.parse_args()
    lookups = {n: bench_lookup(n) for n in (10, 100, 1000)}
    proxy = None if args.skip_proxy else bench_proxy(args.rounds, args.requests)
    isolated = None if args.skip_proxy else bench_proxy_wrk(args.rounds, args.wrk_duration)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    print("```")
    print(f"$ python bench/bench_routing.py --rounds {args.rounds} --requests {args.requests}")
    print(f"machine: {machine}")
    print("```")
    print()
    print("| routes | StoreRouter.route() hit (µs) | miss (µs) | dict.get floor (µs) | hit / floor |")
    print("|---:|---:|---:|---:|---:|")
    for n, r in lookups.items():
        print(f"| {n} | {r['hit_us']:.2f} | {r['miss_us']:.2f} | {r['dict_get_us']:.3f} | {r['hit_us'] / r['dict_get_us']:.1f}x |")
    worst = max(max(r["hit_us"], r["miss_us"]) for r in lookups.values())
    print(f"\nWorst lookup: {worst:.2f} µs = {worst / 200:.3f} of the 0.2 ms budget.")
    if proxy:
        print()
        print(f"| proxy config ({args.rounds} rounds x {args.requests} sequential requests) | median latency (ms) | vs its baseline | added (ms) | per-round medians |")
        print("|---|---:|---:|---:|---|")
        for kind, label in (("none", "no router (baseline)"), ("nomatch", "1000 routes, none matching"),
                            ("shadow", "shadow route, back to back"), ("none_paced", "no router, 5 ms between requests (baseline 2)"),
                            ("shadow_paced", "shadow route, 5 ms between requests")):
            base = proxy["none_paced" if kind.endswith("_paced") else "none"]["median_ms"]
            m = proxy[kind]["median_ms"]
            rounds = ", ".join(f"{x:.3f}" for x in proxy[kind]["rounds"])
            print(f"| {label} | {m:.3f} | {m / base:.3f}x | {m - base:+.3f} | {rounds} |")
        print(f"\nShadow captures written: {int(proxy['shadow']['shadow_captures'])}; served-by headers seen: {proxy['served_by']}")
    if isolated:
        print()
        print(f"Isolated: each config a `protege serve` subprocess, fast_upstream.py in its own process, wrk -c1 "
              f"({args.rounds} rounds x {args.wrk_duration} s, configs alternating; medians of round medians)")
        print()
        print("| proxy config | median latency (ms) | vs its baseline | added (ms) | per-round medians |")
        print("|---|---:|---:|---:|---|")
        for kind, label in (("none", "no router (baseline)"), ("nomatch", "1000 routes, none matching"),
                            ("shadow", "shadow route, back to back"), ("none_paced", "no router, 5 ms between requests (baseline 2)"),
                            ("shadow_paced", "shadow route, 5 ms between requests")):
            base = statistics.median(isolated["none_paced" if kind.endswith("_paced") else "none"])
            m = statistics.median(isolated[kind])
            rounds = ", ".join(f"{x:.3f}" for x in isolated[kind])
            print(f"| {label} | {m:.3f} | {m / base:.3f}x | {m - base:+.3f} | {rounds} |")
        print(f"\nShadow captures written (isolated run): {int(isolated['shadow_captures'][0])}")


if __name__ == "__main__":
    main()
