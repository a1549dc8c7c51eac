"""The promotion gate: a student replaces the teacher only when shown to be as good, with confidence.

For each gate metric, over held-out items the student never trained on, we take the paired
difference (student - teacher) of item scores against the reference and its confidence interval.
The student passes a metric when the interval's lower bound is above ``-tolerance`` (strictly) on at
least ``min_items`` items: "not worse than the teacher by more than the tolerance", stated with 95%
confidence rather than from a point estimate that a lucky split could inflate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .agreement import normalise_label, normalise_text


@dataclass
class MetricComparison:
    metric: str
    n: int
    student: float  # mean/corpus score of the student
    teacher: float
    diff: float  # student - teacher
    low: float  # CI of diff
    high: float
    p_value: float | None
    test: str
    confidence: float = 0.95


@dataclass
class GateResult:
    passed: bool
    reason: str
    tolerance: float
    min_items: int
    metrics: list[dict[str, Any]] = field(default_factory=list)  # MetricComparison + passed + why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(comparisons: Sequence[MetricComparison], *, tolerance: float, min_items: int) -> GateResult:
    """Pure decision over computed comparisons (every metric must pass)."""
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    if not comparisons:
        return GateResult(False, "no gate metric was computed", tolerance, min_items, [])
    for c in comparisons:
        row = asdict(c)
        if c.n < min_items:
            ok, why = False, f"{c.metric}: only {c.n} held-out items (need {min_items})"
        elif c.low is None or (isinstance(c.low, float) and math.isnan(c.low)):
            ok, why = False, f"{c.metric}: no confidence interval"
        elif round(c.low, 12) > -tolerance:
            ok, why = True, f"{c.metric}: CI lower bound {c.low:+.4f} > -{tolerance:g}"
        else:
            ok, why = False, f"{c.metric}: CI lower bound {c.low:+.4f} <= -{tolerance:g} (diff {c.diff:+.4f})"
        row["passed"] = ok
        row["why"] = why
        rows.append(row)
        if not ok:
            failures.append(why)
    if failures:
        return GateResult(False, "; ".join(failures), tolerance, min_items, rows)
    return GateResult(True, "all gate metrics within tolerance", tolerance, min_items, rows)


# ---------------------------------------------------------------------------------------------
# Computing comparisons


def _binary_scores(metric: str, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    norm = normalise_label if metric in ("label_accuracy", "accuracy", "label") else normalise_text
    return [1.0 if norm(h) == norm(r) else 0.0 for h, r in zip(hyps, refs)]


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, seed: int, confidence: float = 0.95, n_resamples: int = 2000) -> tuple[float, float, float, float]:
    """(diff, low, high, p) of mean(a - b) by seeded percentile bootstrap over items."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    diff = float(d.mean())
    # two-sided p for "no difference": share of resamples on the other side of zero, doubled
    if np.all(d == 0):
        p = 1.0
    else:
        p = float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))
    return diff, float(low), float(high), p


def compare_metric(
    metric: str,
    student: Sequence[str],
    teacher: Sequence[str],
    references: Sequence[str],
    *,
    seed: int = 0,
    confidence: float = 0.95,
) -> MetricComparison:
    """Student vs teacher on one metric. Uses ``protege.evals`` (metrics + paired statistics) when
    it knows the metric; exact match and label accuracy also work without it."""
    n = len(references)
    if metric in ("label_accuracy", "accuracy", "label"):
        # Labels are compared after the same normalisation as online agreement ({"label": "Spam"} == "spam").
        student, teacher, references = ([normalise_label(x) for x in seq] for seq in (student, teacher, references))
    try:
        from protege.evals.metrics import get_metric  # type: ignore[import-not-found]
        from protege.evals.stats import paired_difference  # type: ignore[import-not-found]

        m = get_metric("exact_match" if metric == "accuracy" else metric)
    except Exception:  # noqa: BLE001 - evals not installed, or the metric is unknown to it
        m = None
    if m is not None:
        # evals.stats: diff = b - a, so the teacher is the baseline (a) and the student the candidate (b)
        res = paired_difference(m, list(teacher), list(student), list(references), seed=seed, confidence=confidence)
        s_score = getattr(res, "score_b", None)
        t_score = getattr(res, "score_a", None)
        if s_score is None or t_score is None:
            s_score = m.corpus_score(list(student), list(references))
            t_score = m.corpus_score(list(teacher), list(references))
        return MetricComparison(metric, n, float(s_score), float(t_score), float(res.diff), float(res.low), float(res.high),
                                None if res.p_value is None else float(res.p_value), str(res.test), confidence)
    if metric not in ("exact_match", "label_accuracy", "accuracy", "label"):
        raise ValueError(f"gate metric {metric!r} needs protege.evals (not available)")
    s = _binary_scores(metric, student, references)
    t = _binary_scores(metric, teacher, references)
    diff, low, high, p = paired_bootstrap(s, t, seed=seed, confidence=confidence)
    return MetricComparison(metric, n, float(np.mean(s)) if n else float("nan"), float(np.mean(t)) if n else float("nan"),
                            diff, low, high, p, "paired_bootstrap", confidence)


def run_gate(
    gate: Any,
    student: Sequence[str],
    teacher: Sequence[str],
    references: Sequence[str],
) -> GateResult:
    """Compute every metric of ``gate`` (a policies.GateSpec) and decide."""
    comparisons = [
        compare_metric(metric, student, teacher, references, seed=gate.seed, confidence=gate.confidence) for metric in gate.metrics
    ]
    return decide(comparisons, tolerance=gate.tolerance, min_items=gate.min_items)
