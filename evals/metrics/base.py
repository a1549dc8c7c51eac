"""The one interface every metric implements (in the spirit of sacrebleu's ``Metric`` base class).

A metric scores candidate outputs (hypotheses) against references, item by item and as a corpus.
Scores are on a 0-1 scale in Protege (sacrebleu's 0-100 is divided by 100), higher is better.

As sacrebleu's base class owns statistics extraction and the corpus score, this one owns what the
batch scorer (``protege.evals.scoring``) and the statistics (``protege.evals.stats``) need, so that a
new metric is one new module in this package and nothing else is taught about it:

* :meth:`Metric.score_items` -- item scores and, for corpus metrics, per-item *sufficient statistics*
  from one pass; :meth:`Metric.result` turns them into a typed :class:`MetricResult` (headline,
  items, signature, confidence interval);
* ``batchable`` -- the work is pure CPU on (output, reference) strings, so the batch scorer may score
  identical pairs once and split the work over forked worker processes;
* :meth:`Metric.group_key` / :meth:`Metric.score_group` -- metrics that share expensive work
  (every ROUGE type shares one tokenisation) are scored in one pass;
* the bootstrap's fast paths: ``aggregate_stats(stats_subset)`` recomputes the corpus score from
  resampled statistics without re-tokenising; ``additive_stats`` + ``score_from_totals`` when the
  corpus statistic is the sum of item vectors (BLEU, chrF); ``bootstrap_scores`` for anything else
  that can score many resamples at once (macro-F1).

Implementations: the other modules of this package; build them by name with
``protege.evals.metrics.get_metric``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from protege.evals.stats import CI, DEFAULT_RESAMPLES, bootstrap_ci_data


def check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    """Outputs and references must pair up and be strings (every metric checks its input the same way)."""
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} outputs but {len(refs)} references; they must pair up")
    for seq in (hyps, refs):
        for x in seq:
            if not isinstance(x, str):
                raise TypeError(f"outputs and references must be strings, got {type(x).__name__}")


@dataclass
class Scores:
    """One scoring pass over pairs: a 0-1 score per pair, and per-pair sufficient statistics for
    corpus metrics (the input of the corpus score and of the bootstrap), else None."""

    items: list[float]
    stats: list[Any] | None = None


@dataclass
class MetricResult:
    """A metric's typed result over a set of pairs."""

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

    def bootstrap(self, metric: "Metric", seed: int = 0, n_resamples: int = DEFAULT_RESAMPLES,
                  confidence: float = 0.95) -> CI:
        self.ci = bootstrap_ci_data(metric, self.data, seed, n_resamples, confidence)
        return self.ci


class Metric(ABC):
    #: short unique name used in reports and the store, e.g. "bleu", "rouge1", "exact_match"
    name: str
    #: "corpus" when the headline is not the mean of item scores (BLEU, chrF); else "mean"
    kind: str = "mean"
    #: "binary" for 0/1 item scores (McNemar applies), "continuous" otherwise
    scale: str = "continuous"
    #: True when item stats are equal-length number vectors whose SUM is the corpus statistic
    #: (BLEU, chrF): a bootstrap then needs one matrix product, not one aggregate call per resample
    additive_stats: bool = False
    #: True when scoring is pure CPU work on the (output, reference) strings, deterministic and
    #: picklable: the batch scorer then scores identical pairs once and may fork workers. Metrics
    #: that call a model (the judge) or count their calls keep False and see every pair in order.
    batchable: bool = False

    @abstractmethod
    def item_scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        """One score in [0, 1] per item."""

    def corpus_score(self, hyps: Sequence[str], refs: Sequence[str]) -> float:
        """The headline score; the mean of item scores unless the metric is a corpus metric."""
        scores = self.item_scores(hyps, refs)
        return sum(scores) / len(scores) if scores else 0.0

    def item_stats(self, hyps: Sequence[str], refs: Sequence[str]) -> list[Any] | None:
        """Per-item sufficient statistics for corpus metrics (None for mean metrics)."""
        return None

    def aggregate_stats(self, stats: Sequence[Any]) -> float:
        """Corpus score from a (resampled) list of per-item sufficient statistics."""
        raise NotImplementedError

    def score_from_totals(self, totals: Sequence[int]) -> float:
        """Corpus score from summed item stats; only for ``additive_stats`` metrics."""
        raise NotImplementedError

    def bootstrap_scores(self, stats: Sequence[Any], counts: Any) -> Any:
        """Optional vectorised corpus scores for many resamples at once; ``counts`` is a (resamples x items)
        array of how often each item was drawn. None (the default) means: call ``aggregate_stats`` per resample."""
        return None

    # -- what the batch scorer asks of a metric ---------------------------------------------------
    def score_items(self, hyps: Sequence[str], refs: Sequence[str]) -> Scores:
        """Item scores and (corpus metrics) item statistics. Corpus metrics whose item scores derive
        from their statistics override this to extract the statistics once."""
        stats = self.item_stats(hyps, refs) if self.kind == "corpus" else None
        return Scores(self.item_scores(hyps, refs), stats)

    def group_key(self) -> Hashable | None:
        """Metrics of the same class with equal keys are scored together by :meth:`score_group`
        (one pass of shared work); None scores this metric on its own."""
        return None

    @classmethod
    def score_group(cls, metrics: Sequence["Metric"], hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Scores]:
        """Score several metrics of this class that share a :meth:`group_key`, by name."""
        return {m.name: m.score_items(hyps, refs) for m in metrics}

    def result(self, scores: Scores) -> MetricResult:
        """The typed result of one scoring pass: the corpus score comes from the statistics for corpus
        metrics, else it is the mean of the item scores."""
        items, stats = scores.items, scores.stats
        corpus = self.aggregate_stats(stats) if stats is not None else (sum(items) / len(items) if items else 0.0)
        return MetricResult(name=self.name, corpus=float(corpus), items=[float(x) for x in items], stats=stats,
                            signature=self.signature(), kind=self.kind, scale=self.scale)

    def score(self, hyps: Sequence[str], refs: Sequence[str]) -> MetricResult:
        """Score pairs with this metric alone (``scoring.score_pairs`` scores many metrics at once)."""
        return self.result(self.score_items(hyps, refs))

    @abstractmethod
    def signature(self) -> str:
        """A printable description of every setting that changes the score, library versions included."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.signature()}>"


class AdditiveStatsMetric(Metric):
    """A corpus metric whose item statistics are number vectors that SUM to the corpus statistic
    (BLEU, chrF). As sacrebleu's ``Metric`` derives corpus and sentence scores from extracted
    statistics, this base derives every score from :meth:`item_stats` in one place: the corpus
    score from the summed vectors (:meth:`score_from_totals`), item scores from each vector
    (:meth:`item_scores_from_stats`), both from one extraction in :meth:`score_items`. A subclass
    gives those three methods and its signature."""

    kind = "corpus"
    additive_stats = True

    @abstractmethod
    def item_stats(self, hyps: Sequence[str], refs: Sequence[str]) -> list[list[int]]:
        """One statistics vector per (output, reference) pair."""

    @abstractmethod
    def score_from_totals(self, totals: Sequence[int]) -> float:
        """The 0-1 corpus score of summed statistics."""

    @abstractmethod
    def item_scores_from_stats(self, stats: Sequence[Sequence[int]]) -> list[float]:
        """The 0-1 item score of each statistics vector."""

    def aggregate_stats(self, stats: Sequence[Any]) -> float:
        if len(stats) == 0:
            return 0.0
        return self.score_from_totals(np.asarray(stats, dtype=np.int64).sum(axis=0))

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        return self.item_scores_from_stats(self.item_stats(hyps, refs))

    def corpus_score(self, hyps: Sequence[str], refs: Sequence[str]) -> float:
        return self.aggregate_stats(self.item_stats(hyps, refs))

    def score_items(self, hyps: Sequence[str], refs: Sequence[str]) -> Scores:
        """One extraction of the statistics gives the item scores and the corpus score."""
        stats = self.item_stats(hyps, refs)
        return Scores(self.item_scores_from_stats(stats), stats)
