"""Corpus BLEU (headline) and sentence BLEU with effective order (per item), via sacrebleu.

Both are computed from ONE pass of per-segment sufficient statistics
``[hyp_len, ref_len, correct_1..4, total_1..4]`` -- the same integers sacrebleu's own
``_extract_corpus_statistics`` produces (proven by tests/test_metrics_sacrebleu.py) -- so the corpus score,
every sentence score and every bootstrap resample reuse one tokenisation. Scores are 0-1
(sacrebleu's 0-100 divided by 100).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import sacrebleu
from sacrebleu.metrics import BLEU

from protege.evals.metrics.base import AdditiveStatsMetric, check_pairs


def _ngram_counters(tokens: list[str], max_order: int) -> list[Counter]:
    """Counters of 1..max_order grams; zip() keeps the loop in C (tuples index like sacrebleu's keys)."""
    out = [Counter(tokens)]
    for n in range(2, max_order + 1):
        out.append(Counter(zip(*[tokens[i:] for i in range(n)])))
    return out


def _matches(h: Counter, r: Counter) -> int:
    keys = h.keys() & r.keys()
    return sum(map(min, map(h.__getitem__, keys), map(r.__getitem__, keys)))


class BleuMetric(AdditiveStatsMetric):
    """sacrebleu BLEU; ``tokenize='char'`` or ``'zh'`` for CJK text (13a sees unsegmented Chinese as one word)."""

    name = "bleu"
    scale = "continuous"
    batchable = True

    def __init__(self, tokenize: str = "13a", lowercase: bool = False, smooth_method: str = "exp",
                 smooth_value: float | None = None, max_ngram_order: int = 4) -> None:
        if tokenize not in BLEU.TOKENIZERS:
            raise ValueError(f"unknown BLEU tokenizer {tokenize!r}; use one of {', '.join(BLEU.TOKENIZERS)}")
        if smooth_method not in BLEU.SMOOTH_DEFAULTS:
            raise ValueError(f"unknown BLEU smooth_method {smooth_method!r}; "
                             f"use one of {', '.join(BLEU.SMOOTH_DEFAULTS)}")
        if max_ngram_order < 1:
            raise ValueError("max_ngram_order must be at least 1")
        kw = dict(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method,
                  smooth_value=smooth_value, max_ngram_order=max_ngram_order, force=True)
        self.tokenize = tokenize
        self.lowercase = lowercase
        self.max_order = max_ngram_order
        self._corpus = BLEU(**kw)
        self._sentence = BLEU(effective_order=True, **kw)
        self._corpus.num_refs = self._sentence.num_refs = 1

    # -- sufficient statistics -------------------------------------------------------------------
    def _prep(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        return self._corpus.tokenizer(text.rstrip()).split()

    def segment_stats(self, hyp: str, ref: str) -> list[int]:
        """Identical to ``BLEU._compute_segment_statistics`` for one reference, without its per-call overhead."""
        h, r = self._prep(hyp), self._prep(ref)
        hc, rc = _ngram_counters(h, self.max_order), _ngram_counters(r, self.max_order)
        correct = [_matches(a, b) for a, b in zip(hc, rc)]
        total = [max(0, len(h) - n) for n in range(self.max_order)]
        return [len(h), len(r), *correct, *total]

    def item_stats(self, hyps: Sequence[str], refs: Sequence[str]) -> list[list[int]]:
        check_pairs(hyps, refs)
        return [self.segment_stats(h, r) for h, r in zip(hyps, refs)]

    def score_from_totals(self, totals: Sequence[int]) -> float:
        return self._corpus._compute_score_from_stats([int(x) for x in totals]).score / 100.0

    def item_scores_from_stats(self, stats: Sequence[Sequence[int]]) -> list[float]:
        f = self._sentence._compute_score_from_stats
        return [f(list(s)).score / 100.0 for s in stats]

    # -- Metric ----------------------------------------------------------------------------------
    def signature(self) -> str:
        return f"bleu|{self._corpus.get_signature()}|item:sentence-eff|scale:0-1"

    def sacrebleu_version(self) -> str:
        return sacrebleu.__version__


METRICS = {"bleu": BleuMetric}
