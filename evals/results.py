"""The scores and statistics of an eval run: computed once, when generation is done, and cached on the run.

:func:`compute_results` scores every system (the teacher and each candidate) with every metric of
the run in one batch pass per system (``scoring.score_pairs``), bootstraps confidence intervals,
compares each candidate with the teacher on the same items (paired), and finds the items where a
candidate differs most from the teacher. Scoring and bootstraps are the expensive part of a report;
everything cheap that may change between reports (prices, usage, the items) is added later by
``protege.evals.report``.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Sequence

from protege.store import Store
from protege.store import evals as db

from . import scoring, stats
from .metrics import load_metrics
from .metrics.base import Metric

TEACHER = "teacher"  # the system name of the captured (teacher) answers
HIST_BINS = 10
N_DIVERGENT = 10


def _is_label_metric(metric: Metric) -> bool:
    """Label metrics (labels.LabelAccuracy) expose ``report()`` with a confusion matrix and an ``extractor``."""
    return callable(getattr(metric, "report", None)) and getattr(metric, "extractor", None) is not None


def _histogram(values: Sequence[float]) -> dict[str, Any]:
    counts = [0] * HIST_BINS
    for v in values:
        counts[min(HIST_BINS - 1, max(0, int(v * HIST_BINS)))] += 1
    return {"edges": [i / HIST_BINS for i in range(HIST_BINS + 1)], "counts": counts}


def _label_report(metric: Any, hyps: list[str], refs: list[str]) -> dict[str, Any]:
    report = metric.report(hyps, refs)
    return {"labels": [str(x) for x in report.labels], "matrix": [[int(v) for v in row] for row in report.confusion],
            "accuracy": report.accuracy, "precision": report.precision, "recall": report.recall, "f1": report.f1,
            "average": report.average, "missing": report.missing, "n": report.n}


def _labels_of(metric: Any, texts: list[str]) -> list[str]:
    return [metric.extractor.extract(t) for t in texts]


def compute_results(store: Store, run_id: str, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score every system on every metric, bootstrap CIs, paired comparisons with the teacher.
    Raises KeyError for an unknown run, ``metrics.MetricSpecError`` for a spec's bad metric.

    A failed generation is not a wrong answer: each system is scored over the items it answered
    (``answered``), and its failures are counted beside the scores (``errors``), never scored 0.
    A candidate's paired comparison with the teacher uses the items that candidate answered.
    ``progress(done, total)`` is called as each system is scored and each comparison made."""
    run = db.get_run(store, run_id)
    if run is None:
        raise KeyError(run_id)
    spec = run["spec"]
    seed, n_resamples = int(spec.get("seed") or 0), int(spec.get("n_resamples") or 1000)
    confidence = float(spec.get("confidence") or 0.95)  # of the paired comparisons (the auto gate sets its own)
    metrics = load_metrics(spec.get("metrics") or [])
    items = db.list_items(store, run_id)
    outputs = {(o["item_id"], o["candidate"]): o for o in db.list_outputs(store, run_id)}
    cand_names = [c["name"] for c in spec["candidates"]]
    # answered[system]: the indices of the items the system has an answer for, in item order.
    answered: dict[str, list[int]] = {}
    hyps: dict[str, list[str]] = {}
    if items and all(it["teacher_output"] is not None for it in items):
        answered[TEACHER] = list(range(len(items)))
        hyps[TEACHER] = [it["teacher_output"] for it in items]
    for name in cand_names:
        ok = [j for j, it in enumerate(items) if outputs.get((it["id"], name), {}).get("status") == "ok"]
        answered[name] = ok
        hyps[name] = [outputs[(items[j]["id"], name)]["output"] or "" for j in ok]
    refs_of = {system: [items[j]["reference"] or "" for j in idx] for system, idx in answered.items()}
    results: dict[str, Any] = {
        "seed": seed, "n_resamples": n_resamples, "n_items": len(items), "systems": list(hyps),
        "reference_kinds": {k: sum(1 for it in items if it["reference_kind"] == k) for k in ("gold", "teacher")},
        "metrics": [], "scores": {}, "paired": {}, "labels": {}, "kappa": {}, "divergent": {},
        "answered": {system: len(idx) for system, idx in answered.items()},
        "errors": {n: len(items) - len(answered[n]) for n in cand_names},
    }
    steps = len(hyps) + len(metrics)  # one scoring pass per system, then the comparisons per metric
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps)

    if progress is not None:
        progress(0, steps)
    score_rows: list[tuple[str, str, str, float | None]] = []
    # One batch-scoring pass per system (scoring.score_pairs: dedupes identical pairs, shares
    # tokenisation across metrics, parallel for big runs); bootstraps reuse its per-item data.
    scored: dict[str, dict[str, scoring.MetricResult]] = {}
    for system, h in hyps.items():
        if h:
            scored[system] = scoring.score_pairs(h, refs_of[system], metrics, bootstrap=n_resamples, seed=seed)
        step()
    for i, metric in enumerate(metrics):
        name = metric.name
        results["metrics"].append({"name": name, "signature": metric.signature(), "kind": metric.kind,
                                   "scale": metric.scale, "primary": i == 0})
        per: dict[str, Any] = {}
        for system in hyps:
            r = scored[system][name] if system in scored else None
            scores = list(r.items) if r is not None else []
            score_rows += [(items[j]["id"], system, name, x) for j, x in zip(answered[system], scores)]
            per[system] = {
                "n": len(answered[system]),
                "errors": results["errors"].get(system, 0),
                "score": r.corpus if r is not None else None,
                "mean": statistics.fmean(scores) if scores else None,
                "ci_low": r.ci.low if r is not None and r.ci is not None else None,
                "ci_high": r.ci.high if r is not None and r.ci is not None else None,
                "histogram": _histogram(scores),
            }
        results["scores"][name] = per
        if TEACHER in scored:
            results["paired"][name] = {}
            for cand in cand_names:
                if cand not in scored:
                    continue
                a, b = scored[TEACHER][name], scored[cand][name]
                idx = answered[cand]
                full_a = a.stats if a.kind == "corpus" else a.items
                data_a = [full_a[j] for j in idx]
                data_b = b.stats if b.kind == "corpus" else b.items
                pr = stats.paired_difference_data(metric, data_a, data_b, seed=seed, n_resamples=n_resamples, confidence=confidence)
                results["paired"][name][cand] = {"diff": pr.diff, "low": pr.low, "high": pr.high,
                                                 "p_value": pr.p_value, "test": pr.test, "n": len(idx)}
        if _is_label_metric(metric) and items:
            results["labels"][name] = {s: _label_report(metric, h, refs_of[s]) for s, h in hyps.items() if h}
            if TEACHER in hyps:
                teacher_labels = _labels_of(metric, hyps[TEACHER])
                results["kappa"][name] = {
                    cand: stats.cohen_kappa([teacher_labels[j] for j in answered[cand]], _labels_of(metric, hyps[cand])).kappa
                    for cand in cand_names if hyps[cand]}
        step()
    # Where does each candidate differ most from the teacher? Scored with the primary metric,
    # the teacher's answer as the reference, lowest similarity first, over the items it answered.
    if metrics and TEACHER in hyps and items:
        primary = metrics[0]
        for cand in cand_names:
            idx = answered[cand]
            sims = [float(s) for s in primary.item_scores(hyps[cand], [hyps[TEACHER][j] for j in idx])] if idx else []
            order = sorted(range(len(idx)), key=lambda k: (sims[k], k))[:N_DIVERGENT]
            results["divergent"][cand] = [
                {"item_id": items[idx[k]]["id"], "idx": items[idx[k]]["idx"], "similarity": sims[k]} for k in order if sims[k] < 1.0
            ]
    db.save_scores(store, run_id, score_rows)
    return results


__all__ = ["HIST_BINS", "N_DIVERGENT", "TEACHER", "compute_results"]
