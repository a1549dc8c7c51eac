"""The one interface every metric implements (in the spirit of sacrebleu's metric classes).

A metric scores candidate outputs (hypotheses) against references, item by item and as a corpus.
Scores are on a 0-1 scale in Protege (sacrebleu's 0-100 is divided by 100), higher is better.
Corpus metrics (BLEU, chrF) also expose per-item *sufficient statistics* so that a bootstrap can
resample items without re-tokenising: ``aggregate_stats(stats_subset)`` recomputes the corpus score.
Two optional fast paths for the bootstrap (``protege.evals.stats``): ``additive_stats`` +
``score_from_totals`` when the corpus statistic is the sum of item vectors (BLEU, chrF), and
``bootstrap_scores`` for anything else that can score many resamples at once (macro-F1).

Implementations: bleu.py, chrf.py, rouge.py, exact.py, labels.py, jsonmetrics.py, graders.py,
judge.py; build them by name with ``protege.evals.metrics.get_metric``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence


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

    @abstractmethod
    def signature(self) -> str:
        """A printable description of every setting that changes the score, library versions included."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.signature()}>"
