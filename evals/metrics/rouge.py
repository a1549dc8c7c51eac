"""ROUGE-N / ROUGE-L / ROUGE-Lsum, numerically identical to Google's rouge-score, Unicode-aware by default.

rouge-score's default tokenizer keeps only ``[a-z0-9]`` -- identical Chinese, Russian or Thai strings
score 0 -- so Protege defaults to :class:`UnicodeTokenizer` and says so in the signature
(``tok:unicode``); ``tokenizer="default"`` gives rouge-score's own behaviour (optionally stemmed).

Speed: rouge-score tokenises once per call and fills an O(m*n) Python DP table for LCS. Here one
tokenisation serves every ROUGE type and the LCS *length* comes from rapidfuzz's C++ ``LCSseq``;
precision/recall/F are then computed with rouge-score's own formulas, so floats are bit-identical
(tests/test_metrics_rouge.py checks against ``RougeScorer.score`` directly). rougeLsum goes through
rouge-score itself after our own sentence split (NLTK punkt data is not available offline).
"""

from __future__ import annotations

import re as _re
from collections import Counter
from collections.abc import Hashable
from typing import Sequence

import regex
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer, scoring, tokenizers

from protege.evals.metrics.base import Metric, Scores, check_pairs

# Scripts written without spaces between words: every character is a token (as for CJK in most
# multilingual ROUGE variants). Everything else: maximal runs of letters, marks and digits.
_NO_SPACE_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
_TOKEN_RE = regex.compile(rf"[{_NO_SPACE_SCRIPTS}]|[[\p{{L}}\p{{N}}\p{{M}}]--[{_NO_SPACE_SCRIPTS}]]+", regex.V1)


class UnicodeTokenizer(tokenizers.Tokenizer):
    """Lowercased words of any script; characters of scripts without word spaces (CJK, Thai, ...)."""

    name = "unicode"

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN_RE.findall(text.lower())


def get_tokenizer(name: str = "unicode", use_stemmer: bool = False) -> tokenizers.Tokenizer:
    if name == "unicode":
        if use_stemmer:
            raise ValueError("use_stemmer only applies to tokenizer='default' (rouge-score's English tokenizer)")
        return UnicodeTokenizer()
    if name == "default":
        return tokenizers.DefaultTokenizer(use_stemmer=use_stemmer)
    raise ValueError(f"unknown ROUGE tokenizer {name!r}; use 'unicode' or 'default'")


_SENT_END = _re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])\s*|\n+")


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence split for rougeLsum: after . ! ? … followed by space, after CJK 。！？, at newlines."""
    return [s.strip() for s in _SENT_END.split(text) if s and s.strip()]


ROUGE_TYPES = tuple(f"rouge{i}" for i in range(1, 10)) + ("rougeL", "rougeLsum")


def _check_type(rouge_type: str) -> None:
    if rouge_type not in ROUGE_TYPES:
        raise ValueError(f"unknown ROUGE type {rouge_type!r}; use one of rouge1..rouge9, rougeL, rougeLsum")


def _ngram_score(t: list[str], p: list[str], n: int) -> tuple[float, float, float]:
    if n == 1:
        tc, pc = Counter(t), Counter(p)
    else:
        tc = Counter(zip(*[t[i:] for i in range(n)]))
        pc = Counter(zip(*[p[i:] for i in range(n)]))
    keys = tc.keys() & pc.keys()
    inter = sum(map(min, map(tc.__getitem__, keys), map(pc.__getitem__, keys)))
    prec = inter / max(max(len(p) - n + 1, 0), 1)
    rec = inter / max(max(len(t) - n + 1, 0), 1)
    return prec, rec, scoring.fmeasure(prec, rec)


def _lcs_score(t: list[str], p: list[str]) -> tuple[float, float, float]:
    if not t or not p:
        return 0, 0, 0
    lcs = LCSseq.similarity(t, p)
    prec, rec = lcs / len(p), lcs / len(t)
    return prec, rec, scoring.fmeasure(prec, rec)


class RougeFamily:
    """Scores several ROUGE types per pair with one tokenisation; returns (precision, recall, F) per type."""

    def __init__(self, rouge_types: Sequence[str], tokenizer: str = "unicode", use_stemmer: bool = False) -> None:
        for t in rouge_types:
            _check_type(t)
        self.rouge_types = list(rouge_types)
        self.tokenizer_name = tokenizer
        self.use_stemmer = use_stemmer
        self.tokenizer = get_tokenizer(tokenizer, use_stemmer)
        self._lsum = rouge_scorer.RougeScorer(["rougeLsum"], tokenizer=self.tokenizer) \
            if "rougeLsum" in rouge_types else None

    def score_pair(self, hyp: str, ref: str) -> dict[str, tuple[float, float, float]]:
        tok = self.tokenizer.tokenize
        t, p = tok(ref), tok(hyp)
        out: dict[str, tuple[float, float, float]] = {}
        for rt in self.rouge_types:
            if rt == "rougeL":
                out[rt] = _lcs_score(t, p)
            elif rt == "rougeLsum":
                s = self._lsum.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(hyp)))["rougeLsum"]
                out[rt] = (s.precision, s.recall, s.fmeasure)
            else:
                out[rt] = _ngram_score(t, p, int(rt[5:]))
        return out

    def fmeasures(self, hyps: Sequence[str], refs: Sequence[str]) -> dict[str, list[float]]:
        check_pairs(hyps, refs)
        res: dict[str, list[float]] = {rt: [] for rt in self.rouge_types}
        for h, r in zip(hyps, refs):
            for rt, s in self.score_pair(h, r).items():
                res[rt].append(s[2])
        return res

    def signature_for(self, rouge_type: str) -> str:
        import importlib.metadata as md
        stem = "yes" if self.use_stemmer else "no"
        split = "|sent:rule" if rouge_type == "rougeLsum" else ""
        return (f"{rouge_type}|tok:{self.tokenizer_name}|stem:{stem}{split}|score:f|"
                f"rouge-score:{md.version('rouge-score')}|scale:0-1")


class RougeMetric(Metric):
    """One ROUGE type's F-measure per item; the headline is the mean over items (as rouge-score reports)."""

    kind = "mean"
    scale = "continuous"
    batchable = True

    def __init__(self, rouge_type: str = "rougeL", tokenizer: str = "unicode", use_stemmer: bool = False) -> None:
        self.family = RougeFamily([rouge_type], tokenizer, use_stemmer)
        self.name = rouge_type
        self.rouge_type = rouge_type

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        return self.family.fmeasures(hyps, refs)[self.rouge_type]

    def group_key(self) -> Hashable:
        """ROUGE types with the same tokenizer setting share one tokenisation per pair."""
        return (self.family.tokenizer_name, self.family.use_stemmer)

    @classmethod
    def score_group(cls, metrics: Sequence[Metric], hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Scores]:
        rouge = [m for m in metrics if isinstance(m, RougeMetric)]
        first = rouge[0].family
        family = RougeFamily(list(dict.fromkeys(m.rouge_type for m in rouge)), first.tokenizer_name, first.use_stemmer)
        by_type = family.fmeasures(hyps, refs)
        return {m.name: Scores(by_type[m.rouge_type]) for m in rouge}

    def signature(self) -> str:
        return self.family.signature_for(self.rouge_type)


def _rouge(rouge_type: str):
    def make(**options: object) -> RougeMetric:
        return RougeMetric(rouge_type, **options)  # type: ignore[arg-type]
    return make


METRICS = {rouge_type: _rouge(rouge_type) for rouge_type in ROUGE_TYPES}
