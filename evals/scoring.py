"""Fast batch scoring of many metrics on many (output, reference) pairs.

``score_pairs`` gives exactly the numbers sacrebleu and rouge-score give pair by pair (the bench and
tests assert equality), but:

* BLEU and chrF extract per-segment sufficient statistics once; the corpus score, every sentence
  score and later every bootstrap resample are computed from those integers;
* all ROUGE types share one tokenisation, and ROUGE-L's LCS length comes from rapidfuzz (C++);
* identical (output, reference) pairs are scored once;
* large inputs are split over forked worker processes (``workers``; default: all cores), only
  when the calling process has no other threads (see ``_can_fork``).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Sequence

from protege.evals.base import Metric
from protege.evals.bleu import BleuMetric, _check_pairs
from protege.evals.chrf import ChrfMetric
from protege.evals.exact import ExactMatch
from protege.evals.metrics import get_metric
from protege.evals.rouge import RougeFamily, RougeMetric
from protege.evals.stats import CI, DEFAULT_RESAMPLES, bootstrap_ci_data

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match")
PARALLEL_MIN_PAIRS = 2000  # below this, process start-up costs more than it saves


@dataclass
class MetricResult:
    name: str
    corpus: float  # the headline: corpus score (BLEU, chrF) or mean of item scores; 0-1
    items: list[float]  # one 0-1 score per pair, in input order
    stats: list[Any] | None  # per-pair sufficient statistics for corpus metrics (bootstrap input), else None
    signature: str
    kind: str = "mean"
    scale: str = "continuous"
    ci: CI | None = None

    @property
    def data(self) -> list[Any]:
        """What the statistics resample: item stats for corpus metrics, item scores otherwise
        (pass to ``stats.bootstrap_ci_data`` / ``stats.paired_difference_data``)."""
        return self.stats if self.kind == "corpus" and self.stats is not None else self.items

    def bootstrap(self, metric: Metric, seed: int = 0, n_resamples: int = DEFAULT_RESAMPLES,
                  confidence: float = 0.95) -> CI:
        self.ci = bootstrap_ci_data(metric, self.data, seed, n_resamples, confidence)
        return self.ci


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
    """What the per-pair fast loop computes; picklable so that pool workers rebuild it."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.stat_metrics = [m for m in metrics if isinstance(m, (BleuMetric, ChrfMetric))]
        rouge = [m for m in metrics if isinstance(m, RougeMetric)]
        # one family per tokenizer setting, so that each pair is tokenised once per setting
        self.families: list[RougeFamily] = []
        by_setting: dict[tuple, list[str]] = {}
        for m in rouge:
            by_setting.setdefault((m.family.tokenizer_name, m.family.use_stemmer), []).append(m.rouge_type)
        for (tok, stem), types in by_setting.items():
            self.families.append(RougeFamily(types, tok, stem))
        self.exact = [m for m in metrics if isinstance(m, ExactMatch)]
        self.rouge_names = {(m.family.tokenizer_name, m.family.use_stemmer, m.rouge_type): m.name for m in rouge}

    def run(self, hyps: Sequence[str], refs: Sequence[str]) -> dict[str, tuple[list[float], list | None]]:
        out: dict[str, tuple[list[float], list | None]] = {}
        for m in self.stat_metrics:
            stats = m.item_stats(hyps, refs)
            out[m.name] = (m.item_scores_from_stats(stats), stats)
        for fam in self.families:
            res = fam.fmeasures(hyps, refs)
            for rt, scores in res.items():
                out[self.rouge_names[(fam.tokenizer_name, fam.use_stemmer, rt)]] = (scores, None)
        for m in self.exact:
            out[m.name] = (m.item_scores(hyps, refs), None)
        return out


def _run_chunk(plan: _Plan, hyps: list[str], refs: list[str]) -> dict[str, tuple[list[float], list | None]]:
    return plan.run(hyps, refs)


def _can_fork() -> bool:
    """Forked workers inherit the imported libraries (no start-up cost) but forking a process that
    has other threads can deadlock the child on a lock held at fork time; spawn would re-import the
    caller's __main__, which servers and notebooks do not tolerate. So: fork or stay serial."""
    return "fork" in mp.get_all_start_methods() and threading.active_count() == 1


def _run_parallel(plan: _Plan, hyps: list[str], refs: list[str], workers: int) -> dict:
    n = len(hyps)
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
            futures = [pool.submit(_run_chunk, plan, hyps[a:b], refs[a:b]) for a, b in zip(bounds, bounds[1:])]
            parts = [f.result() for f in futures]
    except (BrokenProcessPool, OSError) as exc:  # e.g. no memory to fork: still answer, just slower
        log.warning("metric scoring pool failed (%s); scoring serially", type(exc).__name__)
        return plan.run(hyps, refs)
    merged: dict[str, tuple[list[float], list | None]] = {}
    for name in parts[0]:
        items = [x for p in parts for x in p[name][0]]
        stats = None if parts[0][name][1] is None else [x for p in parts for x in p[name][1]]
        merged[name] = (items, stats)
    return merged


def score_pairs(hyps: Sequence[str], refs: Sequence[str], metrics: Sequence[str | Metric] = DEFAULT_METRICS, *,
                options: dict[str, dict] | None = None, workers: int | None = None, dedupe: bool = True,
                bootstrap: int = 0, seed: int = 0) -> dict[str, MetricResult]:
    """Score every pair with every metric; names (with ``options[name]`` as constructor options) or
    :class:`Metric` instances. ``bootstrap=N`` also fills each result's ``ci`` (N resamples, ``seed``)."""
    _check_pairs(hyps, refs)
    resolved = _resolve(metrics, options)
    plan = _Plan(resolved)
    fast = {m.name for m in plan.stat_metrics} | set(plan.rouge_names.values()) | {m.name for m in plan.exact}

    # identical pairs are scored once
    if dedupe:
        index: dict[tuple[str, str], int] = {}
        where = [index.setdefault((h, r), len(index)) for h, r in zip(hyps, refs)]
        u_hyps = [p[0] for p in index]
        u_refs = [p[1] for p in index]
    else:
        where, u_hyps, u_refs = list(range(len(hyps))), list(hyps), list(refs)

    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    if workers > 1 and len(u_hyps) >= PARALLEL_MIN_PAIRS and fast and _can_fork():
        raw = _run_parallel(plan, u_hyps, u_refs, min(workers, len(u_hyps)))
    else:
        raw = plan.run(u_hyps, u_refs)

    results: dict[str, MetricResult] = {}
    for m in resolved:
        if m.name in fast:
            u_items, u_stats = raw[m.name]
            items = [u_items[i] for i in where]
            stats = None if u_stats is None else [u_stats[i] for i in where]
            corpus = m.aggregate_stats(stats) if stats is not None else (sum(items) / len(items) if items else 0.0)
        else:
            items = m.item_scores(hyps, refs)
            stats = m.item_stats(hyps, refs) if m.kind == "corpus" else None
            corpus = m.aggregate_stats(stats) if stats is not None else (sum(items) / len(items) if items else 0.0)
        res = MetricResult(name=m.name, corpus=float(corpus), items=[float(x) for x in items], stats=stats,
                           signature=m.signature(), kind=m.kind, scale=m.scale)
        if bootstrap and items:
            res.bootstrap(m, seed=seed, n_resamples=bootstrap)
        results[m.name] = res
    return results
