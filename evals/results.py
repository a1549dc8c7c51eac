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
from typing import Any, Sequence

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


def compute_results(store: Store, run_id: str) -> dict[str, Any]:
    """Score every system on every metric, bootstrap CIs, paired comparisons with the teacher.
    Raises KeyError for an unknown run, ``metrics.MetricSpecError`` for a spec's bad metric."""
    run = db.get_run(store, run_id)
    if run is None:
        raise KeyError(run_id)
    spec = run["spec"]
    seed, n_resamples = int(spec.get("seed") or 0), int(spec.get("n_resamples") or 1000)
    metrics = load_metrics(spec.get("metrics") or [])
    items = db.list_items(store, run_id)
    refs = [it["reference"] or "" for it in items]
    outputs = {(o["item_id"], o["candidate"]): o for o in db.list_outputs(store, run_id)}
    cand_names = [c["name"] for c in spec["candidates"]]
    hyps: dict[str, list[str]] = {}
    if items and all(it["teacher_output"] is not None for it in items):
        hyps[TEACHER] = [it["teacher_output"] for it in items]
    for name in cand_names:
        # A failed generation scores as an empty answer: a student that errors is not "as good".
        hyps[name] = [
            (outputs[(it["id"], name)]["output"] or "") if outputs.get((it["id"], name), {}).get("status") == "ok" else ""
            for it in items
        ]
    results: dict[str, Any] = {
        "seed": seed, "n_resamples": n_resamples, "n_items": len(items), "systems": list(hyps),
        "reference_kinds": {k: sum(1 for it in items if it["reference_kind"] == k) for k in ("gold", "teacher")},
        "metrics": [], "scores": {}, "paired": {}, "labels": {}, "kappa": {}, "divergent": {},
        "errors": {n: sum(1 for it in items if outputs.get((it["id"], n), {}).get("status") != "ok") for n in cand_names},
    }
    score_rows: list[tuple[str, str, str, float | None]] = []
    # One batch-scoring pass per system (scoring.score_pairs: dedupes identical pairs, shares
    # tokenisation across metrics, parallel for big runs); bootstraps reuse its per-item data.
    scored: dict[str, dict[str, scoring.MetricResult]] = {}
    if items:
        for system, h in hyps.items():
            scored[system] = scoring.score_pairs(h, refs, metrics, bootstrap=n_resamples, seed=seed)
    for i, metric in enumerate(metrics):
        name = metric.name
        results["metrics"].append({"name": name, "signature": metric.signature(), "kind": metric.kind,
                                   "scale": metric.scale, "primary": i == 0})
        per: dict[str, Any] = {}
        for system in hyps:
            r = scored[system][name] if items else None
            scores = list(r.items) if r is not None else []
            score_rows += [(it["id"], system, name, x) for it, x in zip(items, scores)]
            per[system] = {
                "n": len(items),
                "score": r.corpus if r is not None else None,
                "mean": statistics.fmean(scores) if scores else None,
                "ci_low": r.ci.low if r is not None and r.ci is not None else None,
                "ci_high": r.ci.high if r is not None and r.ci is not None else None,
                "histogram": _histogram(scores),
            }
        results["scores"][name] = per
        if TEACHER in hyps and items:
            results["paired"][name] = {}
            for cand in cand_names:
                a, b = scored[TEACHER][name], scored[cand][name]
                data_a, data_b = (a.stats, b.stats) if a.kind == "corpus" else (a.items, b.items)
                pr = stats.paired_difference_data(metric, data_a, data_b, seed=seed, n_resamples=n_resamples)
                results["paired"][name][cand] = {"diff": pr.diff, "low": pr.low, "high": pr.high,
                                                 "p_value": pr.p_value, "test": pr.test}
        if _is_label_metric(metric) and items:
            results["labels"][name] = {s: _label_report(metric, h, refs) for s, h in hyps.items()}
            if TEACHER in hyps:
                teacher_labels = _labels_of(metric, hyps[TEACHER])
                results["kappa"][name] = {cand: stats.cohen_kappa(teacher_labels, _labels_of(metric, hyps[cand])).kappa
                                          for cand in cand_names}
    # Where does each candidate differ most from the teacher? Scored with the primary metric,
    # the teacher's answer as the reference, lowest similarity first.
    if metrics and TEACHER in hyps and items:
        primary = metrics[0]
        for cand in cand_names:
            sims = [float(s) for s in primary.item_scores(hyps[cand], hyps[TEACHER])]
            order = sorted(range(len(items)), key=lambda j: (sims[j], j))[:N_DIVERGENT]
            results["divergent"][cand] = [
                {"item_id": items[j]["id"], "idx": items[j]["idx"], "similarity": sims[j]} for j in order if sims[j] < 1.0
            ]
    db.save_scores(store, run_id, score_rows)
    return results



__all__ = ["HIST_BINS", "N_DIVERGENT", "TEACHER", "compute_results"]
