"""Exact match after a configurable, stated normalisation (binary per item, so McNemar applies)."""

from __future__ import annotations

import unicodedata
from typing import Sequence

import regex

from protege.evals.metrics.base import Metric, check_pairs

_PUNCT = regex.compile(r"[\p{P}\p{S}]+")
_SPACE = regex.compile(r"\s+")


class ExactMatch(Metric):
    """1.0 when the normalised output equals the normalised reference.

    Defaults (strip + collapse whitespace, case- and punctuation-sensitive) catch formatting noise
    without hiding real differences; every switch is in the signature so reports stay comparable.
    """

    name = "exact_match"
    kind = "mean"
    scale = "binary"
    batchable = True

    def __init__(self, ignore_case: bool = False, collapse_whitespace: bool = True,
                 ignore_punctuation: bool = False, strip: bool = True, unicode_nfkc: bool = False) -> None:
        self.ignore_case = ignore_case
        self.collapse_whitespace = collapse_whitespace
        self.ignore_punctuation = ignore_punctuation
        self.strip = strip
        self.unicode_nfkc = unicode_nfkc

    def normalize(self, text: str) -> str:
        if self.unicode_nfkc:
            text = unicodedata.normalize("NFKC", text)
        if self.ignore_case:
            text = text.casefold()
        if self.ignore_punctuation:
            text = _PUNCT.sub(" " if self.collapse_whitespace else "", text)
        if self.collapse_whitespace:
            text = _SPACE.sub(" ", text)
        if self.strip or self.collapse_whitespace and self.ignore_punctuation:
            text = text.strip()
        return text

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        check_pairs(hyps, refs)
        norm = self.normalize
        if not (self.ignore_case or self.collapse_whitespace or self.ignore_punctuation or self.strip
                or self.unicode_nfkc):
            return [1.0 if h == r else 0.0 for h, r in zip(hyps, refs)]
        return [1.0 if h == r or norm(h) == norm(r) else 0.0 for h, r in zip(hyps, refs)]

    def signature(self) -> str:
        yn = lambda b: "yes" if b else "no"  # noqa: E731
        return (f"exact_match|case:{'insensitive' if self.ignore_case else 'sensitive'}|"
                f"ws:{'collapse' if self.collapse_whitespace else 'keep'}|punct:{'ignore' if self.ignore_punctuation else 'keep'}|"
                f"strip:{yn(self.strip)}|nfkc:{yn(self.unicode_nfkc)}")


METRICS = {"exact_match": ExactMatch}
