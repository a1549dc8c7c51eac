"""Fast batch scoring of many metrics on many (output, reference) pairs.

``score_pairs`` gives exactly the numbers sacrebleu and rouge-score give pair by pair (the bench and
tests assert equality), but every metric says what the fast path may do with it (see
``protege.evals.metrics.base``), so this module knows no metric by name or class:

* corpus metrics (BLEU, chrF) extract per-segment sufficient statistics once (``score_items``); the
  corpus score, every sentence score and later every bootstrap resample come from those integers;
* metrics that share work are scored in one pass (``group_key``/``score_group``: all ROUGE types of
  one tokenizer setting share one tokenisation, and ROUGE-L's LCS length comes from rapidfuzz);
* for ``batchable`` metrics identical (output, reference) pairs are scored once, and large inputs
  are split over forked worker processes (``workers``; default: all cores), only when the calling
  process has no other threads (see ``_can_fork``).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

from protege.evals.metrics import get_metric
from protege.evals.metrics.base import Metric, MetricResult, Scores, check_pairs

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match")
PARALLEL_MIN_PAIRS = 2000  # below this, process start-up costs more than it saves

__all__ = ["DEFAULT_METRICS", "MetricResult", "score_pairs"]


def _resolve(metrics: Sequence[str | Metric], options: dict[str, dict] | None) -> list[Metric]:
    out: list[Metric] = []
    for m in metrics:
        out.append(m if isinstance(m, Metric) else get_metric(m, **(options or {}).get(m, {})))
    names = [m.name for m in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"metric names must be unique in one call: {', '.join(sorted(dupes))}")
    return out


class _Plan:
    """The batchable metrics in groups that share one pass (each metric's ``group_key``); picklable,
    so that pool workers run the same plan on their chunk."""

    def __init__(self, metrics: list[Metric]) -> None:
        groups: dict[object, list[Metric]] = {}
        for m in metrics:
            key = m.group_key()
            groups.setdefault((type(m), key) if key is not None else ("alone", m.name), []).append(m)
        self.groups = list(groups.values())

    def run(self, hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Scores]:
        out: dict[str, Scores] = {}
        for group in self.groups:
            out.update(type(group[0]).score_group(group, hyps, refs))
        return out


def _run_chunk(plan: _Plan, hyps: list[str], refs: list[str]) -> dict[str, Scores]:
    return plan.run(hyps, refs)


def _can_fork() -> bool:
    """Forked workers inherit the imported libraries (no start-up cost) but forking a process that
    has other threads can deadlock the child on a lock held at fork time; spawn would re-import the
    caller's __main__, which servers and notebooks do not tolerate. So: fork or stay serial."""
    return "fork" in mp.get_all_start_methods() and threading.active_count() == 1


def _run_parallel(plan: _Plan, hyps: list[str], refs: list[str], workers: int) -> dict[str, Scores]:
    n = len(hyps)
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
            futures = [pool.submit(_run_chunk, plan, hyps[a:b], refs[a:b]) for a, b in zip(bounds, bounds[1:])]
            parts = [f.result() for f in futures]
    except (BrokenProcessPool, OSError) as exc:  # e.g. no memory to fork: still answer, just slower
        log.warning("metric scoring pool failed (%s); scoring serially", type(exc).__name__)
        return plan.run(hyps, refs)
    merged: dict[str, Scores] = {}
    for name in parts[0]:
        items = [x for p in parts for x in p[name].items]
        stats = None if parts[0][name].stats is None else [x for p in parts for x in p[name].stats]
        merged[name] = Scores(items, stats)
    return merged


def score_pairs(hyps: Sequence[str], refs: Sequence[str], metrics: Sequence[str | Metric] = DEFAULT_METRICS, *,
                options: dict[str, dict] | None = None, workers: int | None = None, dedupe: bool = True,
                bootstrap: int = 0, seed: int = 0) -> dict[str, MetricResult]:
    """Score every pair with every metric; names (with ``options[name]`` as constructor options) or
    :class:`Metric` instances. ``bootstrap=N`` also fills each result's ``ci`` (N resamples, ``seed``)."""
    check_pairs(hyps, refs)
    resolved = _resolve(metrics, options)
    batch = [m for m in resolved if m.batchable]
    plan = _Plan(batch)

    # identical pairs are scored once
    if dedupe:
        index: dict[tuple[str, str], int] = {}
        where = [index.setdefault((h, r), len(index)) for h, r in zip(hyps, refs)]
        u_hyps = [p[0] for p in index]
        u_refs = [p[1] for p in index]
    else:
        where, u_hyps, u_refs = list(range(len(hyps))), list(hyps), list(refs)

    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    if workers > 1 and len(u_hyps) >= PARALLEL_MIN_PAIRS and batch and _can_fork():
        raw = _run_parallel(plan, u_hyps, u_refs, min(workers, len(u_hyps)))
    else:
        raw = plan.run(u_hyps, u_refs)

    results: dict[str, MetricResult] = {}
    for m in resolved:
        if m.batchable:
            u = raw[m.name]
            scores = Scores([u.items[i] for i in where], None if u.stats is None else [u.stats[i] for i in where])
        else:
            scores = m.score_items(hyps, refs)
        res = m.result(scores)
        if bootstrap and res.items:
            res.bootstrap(m, seed=seed, n_resamples=bootstrap)
        results[m.name] = res
    return results
