"""Confidence intervals and teacher-vs-student significance for eval metrics.

* ``bootstrap_ci``: seeded percentile bootstrap over items (>= 1000 resamples). Corpus metrics
  (BLEU, chrF, macro-F1) resample per-item sufficient statistics and re-aggregate -- no re-tokenising;
  additive statistics (BLEU, chrF) need just one matrix product per chunk of resamples.
* ``paired_difference``: candidate minus baseline on the SAME resampled items (paired: the item
  difficulty cancels, which makes the interval far tighter than two separate CIs). The p-value is
  McNemar's for binary metrics (exact binomial when there are fewer than 25 discordant items) and a
  two-sided paired bootstrap test otherwise (bootstrap differences shifted to the null of zero).
* ``cohen_kappa``: teacher-student label agreement beyond chance (scikit-learn).

Everything returns plain dataclasses, JSON-serialisable through ``dataclasses.asdict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
EXACT_MCNEMAR_BELOW = 25  # discordant pairs; the chi-square approximation is poor below this


class Metric(Protocol):
    """What the statistics need of a metric (``protege.evals.metrics.base.Metric`` implements it);
    declared here so that statistics sit below the metrics and import none of them."""

    name: str
    kind: str
    scale: str
    additive_stats: bool

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]: ...

    def item_stats(self, hyps: Sequence[str], refs: Sequence[str]) -> list[Any] | None: ...

    def aggregate_stats(self, stats: Sequence[Any]) -> float: ...

    def score_from_totals(self, totals: Sequence[int]) -> float: ...

    def bootstrap_scores(self, stats: Sequence[Any], counts: Any) -> Any: ...


@dataclass
class CI:
    estimate: float
    low: float
    high: float
    n: int
    confidence: float
    n_resamples: int
    seed: int
    method: str = "percentile-bootstrap"


@dataclass
class PairedResult:
    diff: float  # candidate (b) minus baseline (a)
    low: float
    high: float
    p_value: float
    test: str  # "mcnemar-exact" | "mcnemar-chi2" | "paired-bootstrap"
    n: int = 0
    score_a: float = 0.0
    score_b: float = 0.0
    confidence: float = 0.95
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0


@dataclass
class McNemarResult:
    b: int  # a right, b wrong
    c: int  # a wrong, b right
    n: int
    statistic: float
    p_value: float
    exact: bool


@dataclass
class KappaResult:
    kappa: float
    agreement: float  # observed agreement (share of items with the same label)
    n: int


def _check_args(n: int, n_resamples: int, confidence: float) -> None:
    if n == 0:
        raise ValueError("cannot compute a confidence interval over zero items")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")


def _index_chunks(rng: np.random.Generator, n: int, n_resamples: int):
    """Resample index matrices in chunks so that 10k items x 1000 resamples stays a few MB at a time."""
    rows = max(1, min(n_resamples, 2_000_000 // max(n, 1)))
    done = 0
    while done < n_resamples:
        k = min(rows, n_resamples - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    k = idx.shape[0]
    flat = (idx + (np.arange(k) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=k * n).reshape(k, n).astype(np.float64)


def _resampled(metric: Metric | None, data: Any, idx: np.ndarray) -> np.ndarray:
    """Metric value on each resample (rows of idx). ``data``: item scores (mean) or item stats (corpus)."""
    if metric is None or metric.kind != "corpus":
        return np.asarray(data, dtype=np.float64)[idx].mean(axis=1)
    if metric.additive_stats:
        totals = _counts(idx, len(data)) @ np.asarray(data, dtype=np.float64)
        return np.array([metric.score_from_totals(np.rint(t).astype(np.int64)) for t in totals])
    fast = metric.bootstrap_scores(data, _counts(idx, len(data)))
    if fast is not None:
        return np.asarray(fast, dtype=np.float64)
    return np.array([metric.aggregate_stats([data[i] for i in row]) for row in idx])


def _point(metric: Metric | None, data: Any) -> float:
    if metric is None or metric.kind != "corpus":
        return float(np.mean(np.asarray(data, dtype=np.float64)))
    return float(metric.aggregate_stats(data))


def _data(metric: Metric, hyps: Sequence[str], refs: Sequence[str]) -> Any:
    if metric.kind == "corpus":
        stats = metric.item_stats(hyps, refs)
        if stats is None:
            raise ValueError(f"corpus metric {metric.name!r} does not provide item stats")
        return stats
    return metric.item_scores(hyps, refs)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci_data(metric: Metric | None, data: Any, seed: int = 0, n_resamples: int = DEFAULT_RESAMPLES,
                      confidence: float = 0.95) -> CI:
    """CI from already computed item scores (``metric=None`` or a mean metric) or item stats (corpus metric)."""
    n = len(data)
    _check_args(n, n_resamples, confidence)
    rng = np.random.default_rng(seed)
    values = np.concatenate([_resampled(metric, data, idx) for idx in _index_chunks(rng, n, n_resamples)])
    low, high = _percentiles(values, confidence)
    return CI(estimate=_point(metric, data), low=low, high=high, n=n, confidence=confidence,
              n_resamples=n_resamples, seed=seed)


def bootstrap_ci(metric: Metric, hyps: Sequence[str], refs: Sequence[str], seed: int = 0,
                 n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95) -> CI:
    """Seeded percentile-bootstrap CI of the metric's headline (mean or corpus score)."""
    return bootstrap_ci_data(metric, _data(metric, hyps, refs), seed, n_resamples, confidence)


def mcnemar(a_correct: Sequence[Any], b_correct: Sequence[Any]) -> McNemarResult:
    """McNemar's test on paired binary outcomes; exact two-sided binomial below 25 discordant pairs,
    chi-square with continuity correction otherwise."""
    a = np.asarray(a_correct, dtype=bool)
    b_ = np.asarray(b_correct, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"got {a.size} and {b_.size} outcomes; McNemar needs paired items")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    m = b + c
    if m == 0:
        return McNemarResult(b=b, c=c, n=int(a.size), statistic=0.0, p_value=1.0, exact=True)
    if m < EXACT_MCNEMAR_BELOW:
        from scipy.stats import binomtest

        p = float(binomtest(min(b, c), m, 0.5).pvalue)
        return McNemarResult(b=b, c=c, n=int(a.size), statistic=float(min(b, c)), p_value=min(1.0, p), exact=True)
    from scipy.stats import chi2

    stat = (abs(b - c) - 1.0) ** 2 / m
    return McNemarResult(b=b, c=c, n=int(a.size), statistic=float(stat), p_value=float(chi2.sf(stat, 1)), exact=False)


def paired_difference_data(metric: Metric, data_a: Any, data_b: Any, seed: int = 0,
                           n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95) -> PairedResult:
    """Paired difference b - a from already computed item scores or item stats (same items, same order)."""
    n = len(data_a)
    if len(data_b) != n:
        raise ValueError(f"got {n} and {len(data_b)} items; a paired comparison needs the same items")
    _check_args(n, n_resamples, confidence)
    rng = np.random.default_rng(seed)
    diffs = []
    for idx in _index_chunks(rng, n, n_resamples):
        diffs.append(_resampled(metric, data_b, idx) - _resampled(metric, data_a, idx))
    d = np.concatenate(diffs)
    score_a, score_b = _point(metric, data_a), _point(metric, data_b)
    observed = score_b - score_a
    low, high = _percentiles(d, confidence)
    if metric.scale == "binary" and metric.kind != "corpus":
        mc = mcnemar(np.asarray(data_a) >= 0.5, np.asarray(data_b) >= 0.5)
        p, test = mc.p_value, "mcnemar-exact" if mc.exact else "mcnemar-chi2"
    else:
        # H0: no difference. Shift the bootstrap distribution to mean 0 and count resamples at least as
        # extreme as what was observed (two-sided); +1 keeps p > 0 (Davison & Hinkley).
        extreme = np.sum(np.abs(d - d.mean()) >= abs(observed) - 1e-12)
        p, test = float((extreme + 1) / (len(d) + 1)), "paired-bootstrap"
        if observed == 0.0 and np.all(d == 0.0):
            p = 1.0
    return PairedResult(diff=float(observed), low=low, high=high, p_value=float(p), test=test, n=n,
                        score_a=score_a, score_b=score_b, confidence=confidence, n_resamples=n_resamples, seed=seed)


def paired_difference(metric: Metric, hyps_a: Sequence[str], hyps_b: Sequence[str], refs: Sequence[str],
                      seed: int = 0, n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95) -> PairedResult:
    """Candidate ``hyps_b`` minus baseline ``hyps_a`` (e.g. student minus teacher), scored against ``refs``."""
    return paired_difference_data(metric, _data(metric, hyps_a, refs), _data(metric, hyps_b, refs), seed,
                                  n_resamples, confidence)


def cohen_kappa(labels_a: Sequence[Any], labels_b: Sequence[Any]) -> KappaResult:
    """Cohen's kappa (sklearn). Two raters that both always give the same single label agree perfectly,
    but kappa is 0/0 there; Protege reports 1.0 rather than NaN (which JSON cannot carry)."""
    from sklearn.metrics import cohen_kappa_score

    if len(labels_a) != len(labels_b):
        raise ValueError(f"got {len(labels_a)} and {len(labels_b)} labels; kappa needs paired items")
    if len(labels_a) == 0:
        raise ValueError("cannot compute kappa over zero items")
    a, b = [str(x) for x in labels_a], [str(x) for x in labels_b]
    agreement = sum(x == y for x, y in zip(a, b)) / len(a)
    if len(set(a) | set(b)) == 1:
        return KappaResult(kappa=1.0, agreement=agreement, n=len(a))
    k = float(cohen_kappa_score(a, b))
    if math.isnan(k):
        k = 1.0 if agreement == 1.0 else 0.0
    return KappaResult(kappa=k, agreement=agreement, n=len(a))
