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
        health = writer.health() if hasattr(writer, "health") else {"problems": []}
        for name, help_, value in (
            ("protege_capture_queue_depth", "Captures waiting to be written.", writer.depth),
            ("protege_captures_written_total", "Captures written to the store.", writer.captured),
            ("protege_captures_spooled_total", "Captures written to the spool file instead.", writer.spooled),
            ("protege_captures_dropped_total", "Captures lost: the memory budget was full while no disk took them.", getattr(writer, "dropped", 0)),
            ("protege_captures_invalid_total", "Upstream answers stored raw as invalid_response (fields that fit no column).", getattr(writer, "invalid", 0)),
            ("protege_captures_recovered_total", "Captures loaded from the journal or spool a previous run left.", getattr(writer, "recovered", 0)),
            ("protege_captures_quarantined_total", "Journal or spool records that could not be loaded, kept beside them.", _quarantined(writer)),
            ("protege_capture_journal_errors_total", "Journal writes that failed (captures stayed in memory).", getattr(writer, "journal_errors", 0)),
            ("protege_capture_db_errors_total", "Capture batches the database refused.", getattr(writer, "db_errors", 0)),
            ("protege_capture_memory_bytes", "Memory held by captures not yet written (estimate).", getattr(writer, "memory_bytes", 0)),
            ("protege_capture_degraded", "1 while captures are at risk (see /healthz).", 1 if health["problems"] else 0),
        ):
            kind = "counter" if name.endswith("_total") else "gauge"
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(out) + "\n"


def _quarantined(writer: Any) -> int:
    total = 0
    for part in ("journal", "spool"):
        q = getattr(getattr(writer, part, None), "quarantine", None)
        total += getattr(q, "count", 0)
    return total
