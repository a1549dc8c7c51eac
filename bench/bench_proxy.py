"""Proxy overhead against calling the upstream directly, measured in the same run.

Targets (2 cores, capture on): 32 connections >= 2,500 req/s through the proxy with every request
captured; 1 connection: median added latency <= 1 ms; streaming adds <= 1 ms to time to first byte.

Needs wrk (`apt-get install -y wrk`). Run: python bench/bench_proxy.py [--runs 3] [--duration 5]
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
LUA = HERE / "post_chat.lua"
STREAM_BODY = (
    b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"What is the capital of France?"}]}'
)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 20.0) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--stream-requests", type=int, default=300)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: install it with `apt-get install -y wrk`")

    tmp = Path(tempfile.mkdtemp(prefix="protege-bench-"))
    up_port, px_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OPENAI_API_KEY", None)
    upstream = subprocess.Popen([sys.executable, str(HERE / "fast_upstream.py"), str(up_port)], env=env)
    db = tmp / "bench.duckdb"
    proxy = subprocess.Popen(
        [sys.executable, "-m", "protege", "--db", str(db), "serve", "--port", str(px_port),
         "--upstream", f"http://127.0.0.1:{up_port}/v1"],
        env=env, cwd=str(ROOT),
    )
    direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    proxy_url = f"http://127.0.0.1:{px_port}/v1/chat/completions"
    sent_through_proxy = 0
    rows: dict[str, list[float]] = {k: [] for k in ("rps_d", "rps_p", "lat_d", "lat_p", "ttfb_d", "ttfb_p", "cpu_us")}
    try:
        wait_port(up_port)
        wait_port(px_port)
        sent_through_proxy += wrk(proxy_url, 8, 1)[2]  # warm-up
        for _ in range(args.runs):
            rps, _, _ = wrk(direct_url, 32, args.duration)
            rows["rps_d"].append(rps)
            cpu0 = cpu_seconds(proxy.pid)
            rps, _, n = wrk(proxy_url, 32, args.duration)
            rows["rps_p"].append(rps)
            sent_through_proxy += n
            drain(px_port)
            # CPU per request, capture writing included: less sensitive to other load than req/s.
            rows["cpu_us"].append((cpu_seconds(proxy.pid) - cpu0) / n * 1e6)
            _, lat, _ = wrk(direct_url, 1, max(2, args.duration // 2))
            rows["lat_d"].append(lat)
            _, lat, n = wrk(proxy_url, 1, max(2, args.duration // 2))
            rows["lat_p"].append(lat)
            sent_through_proxy += n
            drain(px_port)
            rows["ttfb_d"].append(ttfb(up_port, "/v1/chat/completions", args.stream_requests))
            rows["ttfb_p"].append(ttfb(px_port, "/v1/chat/completions", args.stream_requests))
            sent_through_proxy += args.stream_requests
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)
        upstream.kill()
        upstream.wait()

    sys.path.insert(0, str(ROOT))
    from protege.store import Store, count

    store = Store(str(db), read_only=True)
    captured = count(store)
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rows.items()}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    print(f"\n### Proxy benchmark (medians of {args.runs} runs, {args.duration} s each)\n")
    print(f"Machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}")
    print(f"Command: python bench/bench_proxy.py --runs {args.runs} --duration {args.duration}; load: wrk -t1 -s bench/post_chat.lua\n")
    print("| Measure | Direct upstream | Through proxy | Ratio / added | Target |")
    print("|---|---|---|---|---|")
    print(f"| 32 connections, req/s | {med['rps_d']:,.0f} | {med['rps_p']:,.0f} | {med['rps_p'] / med['rps_d']:.3f}x | >= 2,500 req/s |")
    print(f"| 32 connections, proxy CPU per request (all threads) | | {med['cpu_us']:.0f} µs | {1e6 / med['cpu_us']:,.0f} req/s per core | |")
    print(f"| 1 connection, median latency | {med['lat_d']:.3f} ms | {med['lat_p']:.3f} ms | +{med['lat_p'] - med['lat_d']:.3f} ms | <= +1 ms |")
    print(f"| Streaming, median time to first byte | {med['ttfb_d']:.3f} ms | {med['ttfb_p']:.3f} ms | +{med['ttfb_p'] - med['ttfb_d']:.3f} ms | <= +1 ms |")
    print(f"\nCaptured rows: {captured:,} for {sent_through_proxy:,} requests wrk/the TTFB client counted through the proxy "
          f"(rows >= counted: wrk does not count requests still in flight when it stops).")
    print("Per run:", {k: [round(x, 3) for x in v] for k, v in rows.items()})
    if captured < sent_through_proxy:
        sys.exit("FAIL: fewer captured rows than answered requests")


if __name__ == "__main__":
    main()
