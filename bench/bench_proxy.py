"""Proxy overhead against calling the upstream directly, measured in the same run.

Targets (2 cores, capture on): 32 connections >= 2,500 req/s through the proxy with every request
captured; 1 connection: median added latency <= 1 ms; streaming adds <= 1 ms to time to first byte.

Needs wrk (`apt-get install -y wrk`). Run: python bench/bench_proxy.py [--runs 3] [--duration 5]
[--base-root ../main --base-python ../main/.venv/bin/python] (that checkout measured in the same run,
interleaved with this one, each against its own direct-upstream baseline).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.http import free_port  # noqa: E402  (the one ephemeral-port helper)

LUA = HERE / "post_chat.lua"
STREAM_BODY = (
    b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"What is the capital of France?"}]}'
)


def wait_port(port: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def wrk(url: str, connections: int, duration: int) -> tuple[float, float, int]:
    """(requests/s, median latency ms, requests completed)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(LUA), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} error responses from {url}")
    return rps, float(m.group(1)) * scale, total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain(port: int, timeout: float = 60.0) -> None:
    """Wait until the proxy has written its queued captures, so that the writer thread's catch-up
    after a load phase does not land in the next latency measurement."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        if re.search(r"^protege_capture_queue_depth 0$", text, re.M):
            return
        time.sleep(0.1)


def ttfb(port: int, path: str, n: int) -> float:
    """Median ms from sending a streaming request to its first response byte, one keep-alive connection."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sk-bench-not-a-real-key\r\nContent-Length: {len(STREAM_BODY)}\r\n\r\n"
    ).encode() + STREAM_BODY
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(req)
        buf = s.recv(65536)
        times.append((time.perf_counter() - t0) * 1000)
        while not buf.endswith(b"data: [DONE]\n\n") and not buf.endswith(b"0\r\n\r\n"):
            buf += s.recv(65536)
    s.close()
    return statistics.median(times)


def start_proxy(root: Path, python: str, db: Path, port: int, up_port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen(
        [python, "-m", "protege", "--db", str(db), "serve", "--port", str(port),
         "--upstream", f"http://127.0.0.1:{up_port}/v1"],
        env=env, cwd=str(root),
    )


def count_rows(python: str, root: Path, db: Path) -> int:
    """Rows in a proxy's store, read by that tree's own code (its schema, its version)."""
    code = (
        "import sys; from protege.store import Store; from protege.store.completions import count; "
        "s = Store(sys.argv[1], read_only=True); print(count(s)); s.close()"
    )
    env = dict(os.environ, PYTHONPATH=str(root))
    return int(subprocess.run([python, "-c", code, str(db)], capture_output=True, text=True, check=True, env=env, cwd=str(root)).stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--stream-requests", type=int, default=300)
    ap.add_argument("--base-root", type=Path, default=None,
                    help="another checkout (e.g. main) to measure in the same run, interleaved with this one")
    ap.add_argument("--base-python", default=None, help="that checkout's interpreter (its venv's python)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: install it with `apt-get install -y wrk`")

    tmp = Path(tempfile.mkdtemp(prefix="protege-bench-"))
    up_port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OPENAI_API_KEY", None)
    upstream = subprocess.Popen([sys.executable, str(HERE / "fast_upstream.py"), str(up_port)], env=env)
    trees = [("this", ROOT, sys.executable)]
    if args.base_root is not None:
        trees.append(("base", args.base_root.resolve(), args.base_python or str(args.base_root / ".venv/bin/python")))
    proxies = {}
    for name, root, python in trees:
        port = free_port()
        db = tmp / f"bench-{name}.duckdb"
        proxies[name] = (port, db, start_proxy(root, python, db, port, up_port), root, python)
    direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    keys = ("rps_d", "rps_p", "lat_d", "lat_p", "ttfb_d", "ttfb_p", "cpu_us")
    rows: dict[str, dict[str, list[float]]] = {name: {k: [] for k in keys} for name in proxies}
    sent: dict[str, int] = {name: 0 for name in proxies}
    try:
        wait_port(up_port)
        for name, (port, *_rest) in proxies.items():
            wait_port(port)
            sent[name] += wrk(f"http://127.0.0.1:{port}/v1/chat/completions", 8, 1)[2]  # warm-up
            drain(port)
        for run in range(args.runs):
            # Interleaved: each tree is measured right after its own direct baseline, in an order
            # that alternates between runs, so drift on a shared machine hits both alike.
            order = list(proxies) if run % 2 == 0 else list(proxies)[::-1]
            for name in order:
                port, _db, proc, _root, _py = proxies[name]
                r = rows[name]
                proxy_url = f"http://127.0.0.1:{port}/v1/chat/completions"
                rps, _, _ = wrk(direct_url, 32, args.duration)
                r["rps_d"].append(rps)
                cpu0 = cpu_seconds(proc.pid)
                rps, _, n = wrk(proxy_url, 32, args.duration)
                r["rps_p"].append(rps)
                sent[name] += n
                drain(port)
                # CPU per request, capture writing included: less sensitive to other load than req/s.
                r["cpu_us"].append((cpu_seconds(proc.pid) - cpu0) / n * 1e6)
                _, lat, _ = wrk(direct_url, 1, max(2, args.duration // 2))
                r["lat_d"].append(lat)
                _, lat, n = wrk(proxy_url, 1, max(2, args.duration // 2))
                r["lat_p"].append(lat)
                sent[name] += n
                drain(port)
                r["ttfb_d"].append(ttfb(up_port, "/v1/chat/completions", args.stream_requests))
                r["ttfb_p"].append(ttfb(port, "/v1/chat/completions", args.stream_requests))
                sent[name] += args.stream_requests
    finally:
        for _port, _db, proc, _root, _py in proxies.values():
            proc.send_signal(signal.SIGTERM)
        for _port, _db, proc, _root, _py in proxies.values():
            proc.wait(60)
        upstream.kill()
        upstream.wait()

    captured = {name: count_rows(py, root, db) for name, (_p, db, _proc, root, py) in proxies.items()}
    shutil.rmtree(tmp, ignore_errors=True)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    print(f"\n### Proxy benchmark (medians of {args.runs} runs, {args.duration} s each)\n")
    print(f"Machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}")
    extra = f" --base-root {args.base_root}" if args.base_root else ""
    print(f"Command: python bench/bench_proxy.py --runs {args.runs} --duration {args.duration}{extra}; load: wrk -t1 -s bench/post_chat.lua\n")
    failed = False
    for name in proxies:
        med = {k: statistics.median(v) for k, v in rows[name].items()}
        print(f"#### {name} ({proxies[name][3]})\n")
        print("| Measure | Direct upstream | Through proxy | Ratio / added | Target |")
        print("|---|---|---|---|---|")
        print(f"| 32 connections, req/s | {med['rps_d']:,.0f} | {med['rps_p']:,.0f} | {med['rps_p'] / med['rps_d']:.4f}x | >= 2,500 req/s |")
        print(f"| 32 connections, proxy CPU per request (all threads) | | {med['cpu_us']:.0f} µs | {1e6 / med['cpu_us']:,.0f} req/s per core | |")
        print(f"| 1 connection, median latency | {med['lat_d']:.3f} ms | {med['lat_p']:.3f} ms | +{med['lat_p'] - med['lat_d']:.3f} ms | <= +1 ms |")
        print(f"| Streaming, median time to first byte | {med['ttfb_d']:.3f} ms | {med['ttfb_p']:.3f} ms | +{med['ttfb_p'] - med['ttfb_d']:.3f} ms | <= +1 ms |")
        print(f"\nCaptured rows: {captured[name]:,} for {sent[name]:,} requests wrk/the TTFB client counted through the proxy "
              f"(rows >= counted: wrk does not count requests still in flight when it stops).")
        print("Per run:", {k: [round(x, 3) for x in v] for k, v in rows[name].items()}, "\n")
        if captured[name] < sent[name]:
            failed = True
    if len(proxies) == 2:
        a = {k: statistics.median(v) for k, v in rows["this"].items()}
        b = {k: statistics.median(v) for k, v in rows["base"].items()}
        print("#### this against base\n")
        print(f"req/s ratio to direct: {a['rps_p'] / a['rps_d']:.4f} vs {b['rps_p'] / b['rps_d']:.4f} "
              f"({(a['rps_p'] / a['rps_d']) / (b['rps_p'] / b['rps_d']):.3f}x); "
              f"CPU per request: {a['cpu_us']:.0f} vs {b['cpu_us']:.0f} µs; "
              f"added latency: +{a['lat_p'] - a['lat_d']:.3f} vs +{b['lat_p'] - b['lat_d']:.3f} ms; "
              f"added TTFB: +{a['ttfb_p'] - a['ttfb_d']:.3f} vs +{b['ttfb_p'] - b['ttfb_d']:.3f} ms")
    if failed:
        sys.exit("FAIL: fewer captured rows than answered requests")


if __name__ == "__main__":
    main()
