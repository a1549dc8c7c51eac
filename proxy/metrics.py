"""Prometheus counters kept as plain dicts (a lock-free increment per request on the hot path)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency_buckets = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def request(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1

    def upstream_latency(self, seconds: float) -> None:
        self.latency_buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def render(self, writer: Any) -> str:
        out = [
            "# HELP protege_requests_total Requests served, by route and status.",
            "# TYPE protege_requests_total counter",
        ]
        for (route, status), n in sorted(self.requests.items()):
            out.append(f'protege_requests_total{{route="{route}",status="{status}"}} {n}')
        out += [
            "# HELP protege_upstream_latency_seconds Time from sending a request upstream to its last byte.",
            "# TYPE protege_upstream_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, n in zip(BUCKETS, self.latency_buckets):
            cumulative += n
            out.append(f'protege_upstream_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        out.append(f'protege_upstream_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}')
        out.append(f"protege_upstream_latency_seconds_sum {self.latency_sum}")
        out.append(f"protege_upstream_latency_seconds_count {self.latency_count}")
        for name, help_, value in (
            ("protege_capture_queue_depth", "Captures waiting to be written.", writer.depth),
            ("protege_captures_written_total", "Captures written to the store.", writer.captured),
            ("protege_captures_spooled_total", "Captures written to the spool file instead.", writer.spooled),
        ):
            kind = "gauge" if name.endswith("depth") else "counter"
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(out) + "\n"
