"""Choosing the best student within a latency budget (``backend = "best"`` policies).

Every candidate (the classifier, a LoRA student, a cloud fine-tune) trains on the same rows: the
dataset's train split minus a *selection* slice. Each is then asked every selection prompt, one at a
time as a client would, which gives both its answers and its per-answer latency. The winner is the
best scorer on the selection metric among those whose median latency is within the budget (ties go
to the faster one). The gate then judges the winner on the dataset's own held-out split, which no
candidate trained on and which played no part in the choice, so choosing does not flatter the gate.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIN_SELECTION_ITEMS = 10


def split_for_selection(train_path: str, out_dir: Path, fraction: float, seed: int = 0) -> tuple[str, str]:
    """(fit file, selection file): a seeded random ``fraction`` of the train split's lines held out.

    Written once per cycle under ``out_dir``; a resumed worker finds the same files."""
    fit_path, sel_path = out_dir / "fit.jsonl", out_dir / "selection.jsonl"
    if fit_path.exists() and sel_path.exists():
        return str(fit_path), str(sel_path)
    lines = [ln for ln in Path(train_path).read_bytes().splitlines(keepends=True) if ln.strip()]
    n_sel = max(MIN_SELECTION_ITEMS, int(len(lines) * fraction))
    if len(lines) - n_sel < MIN_SELECTION_ITEMS:
        raise ValueError(f"the train split has {len(lines)} examples: too few to hold out {n_sel} for choosing a student")
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:n_sel])
    tmp_fit, tmp_sel = fit_path.with_suffix(".part"), sel_path.with_suffix(".part")
    tmp_fit.write_bytes(b"".join(ln if ln.endswith(b"\n") else ln + b"\n" for i, ln in enumerate(lines) if i not in chosen))
    tmp_sel.write_bytes(b"".join(ln if ln.endswith(b"\n") else ln + b"\n" for i, ln in enumerate(lines) if i in chosen))
    tmp_fit.replace(fit_path)
    tmp_sel.replace(sel_path)
    return str(fit_path), str(sel_path)


def timed_answers(answer: Callable[[list[dict[str, Any]]], str], prompts: Sequence[list[dict[str, Any]]]) -> tuple[list[str], list[float]]:
    """Each prompt answered in turn: (answers, milliseconds per answer)."""
    outs: list[str] = []
    times: list[float] = []
    for msgs in prompts:
        t0 = time.perf_counter()
        outs.append(answer(msgs))
        times.append((time.perf_counter() - t0) * 1000.0)
    return outs, times


@dataclass
class CandidateResult:
    label: str  # "classifier", "lora", ...
    backend: str
    job_id: str | None
    model: str | None  # the served model, when trained
    status: str  # "succeeded" | "failed" | "cancelled" | "not_started"
    score: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    n: int = 0
    within_budget: bool | None = None
    error: str | None = None
    note: str = ""


@dataclass
class Selection:
    winner: CandidateResult | None
    reason: str
    metric: str
    latency_budget_ms: float | None
    candidates: list[CandidateResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"winner": None if self.winner is None else self.winner.label,
                "winner_model": None if self.winner is None else self.winner.model,
                "reason": self.reason, "metric": self.metric, "latency_budget_ms": self.latency_budget_ms,
                "candidates": [asdict(c) for c in self.candidates]}


def latency_stats(times: Sequence[float]) -> tuple[float | None, float | None]:
    if not times:
        return None, None
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return round(statistics.median(ordered), 4), round(p90, 4)


def choose(candidates: list[CandidateResult], metric: str, latency_budget_ms: float | None) -> Selection:
    """The best score among trained candidates within the budget; the reason names every candidate."""
    for c in candidates:
        if c.status == "succeeded" and c.score is not None:
            c.within_budget = latency_budget_ms is None or (c.latency_ms_p50 is not None and c.latency_ms_p50 <= latency_budget_ms)
    eligible = [c for c in candidates if c.within_budget]
    parts = []
    for c in candidates:
        if c.status != "succeeded" or c.score is None:
            parts.append(f"{c.label}: {c.status}{f' ({c.error})' if c.error else ''}")
        else:
            budget = "" if latency_budget_ms is None else (" (within budget)" if c.within_budget else f" (over the {latency_budget_ms:g} ms budget)")
            parts.append(f"{c.label}: {metric} {c.score:.4f} at {c.latency_ms_p50:.2f} ms p50{budget}")
    summary = "; ".join(parts)
    if not eligible:
        why = "no candidate trained" if not any(c.status == "succeeded" for c in candidates) else \
            f"no candidate answers within {latency_budget_ms:g} ms"
        return Selection(None, f"{why}: {summary}", metric, latency_budget_ms, candidates)
    winner = max(eligible, key=lambda c: (c.score, -(c.latency_ms_p50 or 0.0)))
    winner.note = "chosen"
    better_but_slow = [c for c in candidates if c.status == "succeeded" and c.score is not None and not c.within_budget
                       and c.score > winner.score]
    head = f"{winner.label} scores best on {metric} within the budget" if latency_budget_ms is not None else f"{winner.label} scores best on {metric}"
    if better_but_slow:
        head += f" ({', '.join(c.label for c in better_but_slow)} scored higher but is too slow)"
    return Selection(winner, f"{head}: {summary}", metric, latency_budget_ms, candidates)


__all__ = ["CandidateResult", "Selection", "choose", "latency_stats", "split_for_selection", "timed_answers"]
