"""What issue 8's access and input fixes cost or save on the hot path, against baselines in the same run.

1. Reading a request body: ``proxy.body.read_body`` (chunks joined once) against the old
   ``body += chunk`` loop, for a 30 MB body in 64 KiB and 4 KiB ASGI messages.
2. Watching for a non-streamed request's client leaving: a watcher task per request (as streams
   have) against the timer the proxy arms instead (the task starts only for answers slower than
   0.25 s): added event-loop time per request, against the proxy's CPU per request in docs/benchmarks.md.
3. Path normalisation on every request, and the Stored-API check on passthrough requests.

CPU-bound and single-process, so it stays meaningful on a loaded machine (ratios of medians).
Run: python bench/bench_access.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import uvloop

from protege.proxy.body import read_body
from protege.proxy.paths import normalise, stored_api_shape

MB30 = 30 * 1024 * 1024


def _receive_from(chunks: list[bytes]):
    it = iter(range(len(chunks)))

    async def receive() -> dict:
        i = next(it)
        return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}

    return receive


async def _old_read(receive, limit: int) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if len(body) > limit:
            raise ValueError
        if not msg.get("more_body"):
            return body


def bench_body(runs: int, piece: int) -> tuple[float, float]:
    data = b"x" * MB30
    chunks = [data[i : i + piece] for i in range(0, len(data), piece)]
    old, new = [], []
    for _ in range(runs):
        for fn, out in ((_old_read, old), (read_body, new)):
            t = time.process_time()
            body = asyncio.run(fn(_receive_from(chunks), 32 * 1024 * 1024))
            out.append(time.process_time() - t)
            assert len(body) == MB30
    return statistics.median(old), statistics.median(new)


async def _watch_cost(n: int) -> tuple[float, float]:
    """Per request: await a no-op upstream call bare, then with the watcher armed around it."""
    never = asyncio.Event()

    async def receive() -> dict:
        await never.wait()
        return {"type": "http.disconnect"}

    async def upstream() -> bytes:
        await asyncio.sleep(0)
        return b"{}"

    async def bare() -> None:
        await upstream()

    async def watched() -> None:
        task = asyncio.current_task()
        armed = True

        def on_gone(_f) -> None:
            if armed and task is not None:
                task.cancel()

        async def watch() -> None:
            await receive()

        watcher = asyncio.ensure_future(watch())
        watcher.add_done_callback(on_gone)
        try:
            await upstream()
        finally:
            armed = False
            watcher.cancel()

    async def timed() -> None:  # what the proxy does: a timer, a watcher only for slow answers
        loop = asyncio.get_running_loop()
        timer = loop.call_later(0.25, lambda: None)
        try:
            await upstream()
        finally:
            timer.cancel()

    out = []
    for fn in (bare, watched, timed):
        t = time.perf_counter()
        for _ in range(n):
            await fn()
        await asyncio.sleep(0)
        out.append((time.perf_counter() - t) / n)
    return out[0], out[1], out[2]


def bench_paths(n: int) -> tuple[float, float, float]:
    plain = "/v1/chat/completions"
    odd = "/v1//chat/./completions/"
    res = []
    for fn, arg in ((normalise, plain), (normalise, odd), (stored_api_shape, "/v1/models/gpt-4o-mini")):
        t = time.perf_counter()
        for _ in range(n):
            fn(arg)
        res.append((time.perf_counter() - t) / n)
    return res[0], res[1], res[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print("1. 30 MB body, CPU seconds (median of", args.runs, "runs)")
    for piece in (64 * 1024, 4 * 1024):
        old, new = bench_body(args.runs, piece)
        print(f"   {piece // 1024:>3} KiB messages: body += chunk {old:.3f} s, read_body {new:.4f} s  ({old / max(new, 1e-9):.0f}x less)")
    uvloop.install()
    costs = [asyncio.run(_watch_cost(50_000)) for _ in range(args.runs)]
    bare = statistics.median(c[0] for c in costs)
    watched = statistics.median(c[1] for c in costs)
    timed = statistics.median(c[2] for c in costs)
    print(f"2. non-streamed disconnect watch, per request ({bare * 1e6:.1f} µs bare): a watcher task from the start "
          f"+{(watched - bare) * 1e6:.1f} µs ({(watched - bare) / 373e-6 * 100:.1f}% of the proxy's 373 µs CPU per request); "
          f"the timer the proxy arms +{(timed - bare) * 1e6:.1f} µs ({(timed - bare) / 373e-6 * 100:.1f}%)")
    plain, odd, shape = bench_paths(200_000)
    print(f"3. normalise: {plain * 1e9:.0f} ns (already normal), {odd * 1e9:.0f} ns (needs work); "
          f"stored_api_shape (passthrough only): {shape * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
