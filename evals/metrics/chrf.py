"""chrF / chrF++ via sacrebleu, corpus score and per-item scores from one pass of sufficient statistics.

The per-segment statistics ``[hyp, ref, match] x (char_order + word_order)`` are integers computed
exactly as ``CHRF._compute_segment_statistics`` does for a single reference (parity is tested),
but with C-level n-gram counting; sacrebleu's own ``_compute_f_score`` turns them into scores.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
from sacrebleu.metrics import CHRF

from protege.evals.metrics.base import AdditiveStatsMetric, check_pairs


_MAX_CHUNK = 16384
_BATCH = 4096


def _prep(text: str, lowercase: bool, whitespace: bool) -> str:
    if lowercase:
        text = text.lower()
    return text if whitespace else "".join(text.split())


def _vectorized_stats(hyps: Sequence[str], refs: Sequence[str], order: int) -> np.ndarray | None:
    """Character n-gram statistics of many (already pre-processed) pairs at once with numpy.

    Every position's ``order``-gram is packed into one int64 (dense char ids, 0 = past the end of the
    string) together with the pair index and the side (hyp/ref); ONE sort then puts equal k-gram
    prefixes of the same pair next to each other for every k, and per-group hyp/ref counts give
    ``sum(min(count_hyp, count_ref))`` -- the same integers as sacrebleu's Counter loop. Returns None
    when the packing does not fit (too many distinct characters) so the caller falls back.
    """
    sep = "\x00" * order
    big = sep.join(hyps) + sep + sep.join(refs) + sep
    if any("\x00" in t for t in hyps) or any("\x00" in t for t in refs):
        return None
    cp = np.frombuffer(big.encode("utf-32-le"), dtype=np.uint32)
    present = np.zeros(int(cp.max()) + 1, dtype=np.int64)
    present[cp] = 1
    present[0] = 0
    table = np.cumsum(present)
    bits = max(1, int(table[-1]).bit_length())
    seg_bits = 62 - bits * order
    if seg_bits < 8:
        return None
    ids = table[cp]
    del cp, present, table
    total = len(ids) - order
    code = ids[:total].copy()
    for j in range(1, order):
        code <<= bits
        code |= ids[j: j + total]
    code = code[ids[:total] != 0]
    n = len(hyps)
    hl = np.fromiter(map(len, hyps), dtype=np.int64, count=n)
    rl = np.fromiter(map(len, refs), dtype=np.int64, count=n)
    lens = np.concatenate([hl, rl])
    out = np.zeros((n, 3 * order), dtype=np.int64)
    chunk = min(_MAX_CHUNK, 1 << seg_bits)
    pair_ids = np.concatenate([np.arange(n, dtype=np.int64)] * 2)
    sides = np.repeat(np.array([0, 1], dtype=np.int64), n)
    pos_pair = np.repeat(pair_ids, lens)
    pos_side = np.repeat(sides, lens)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        sel = (pos_pair >= lo) & (pos_pair < hi)
        keys = ((pos_pair[sel] - lo) << (bits * order + 1)) | (code[sel] << 1) | pos_side[sel]
        keys.sort()
        n_keys = len(keys)
        ref_cum = np.concatenate([[0], np.cumsum(keys & 1)])
        for k in range(1, order + 1):
            prefix = keys >> (1 + bits * (order - k))
            if n_keys:
                starts = np.flatnonzero(np.concatenate([[True], prefix[1:] != prefix[:-1]]))
            else:
                starts = np.zeros(0, dtype=np.int64)
            ends = np.append(starts[1:], n_keys)
            ref_g = ref_cum[ends] - ref_cum[starts]
            hyp_g = (ends - starts) - ref_g
            p = prefix[starts]
            valid = (p & ((1 << bits) - 1)) != 0  # the k-th char exists: a real k-gram
            match = np.bincount(p[valid] >> (bits * k), weights=np.minimum(hyp_g, ref_g)[valid],
                                minlength=hi - lo)
            out[lo:hi, 3 * (k - 1) + 2] = np.rint(match).astype(np.int64)
    for k in range(1, order + 1):
        hc, rc = np.maximum(hl - k + 1, 0), np.maximum(rl - k + 1, 0)
        out[:, 3 * (k - 1)] = np.where(rc > 0, hc, 0)  # sacrebleu: hyp count is 0 when the ref has none
        out[:, 3 * (k - 1) + 1] = rc
    return out


def _char_counters(line: str, order: int, whitespace: bool) -> list[Counter]:
    # str keys (not tuples): a str caches its hash, which makes the matching step ~2x cheaper
    if not whitespace:
        line = "".join(line.split())
    n_chars = len(line)
    out = [Counter(line)]
    for n in range(2, order + 1):
        out.append(Counter([line[i:i + n] for i in range(n_chars - n + 1)]))
    return out


class ChrfMetric(AdditiveStatsMetric):
    """chrF (``word_order=2`` gives chrF++). Character based, so it works for any script."""

    scale = "continuous"

    def __init__(self, char_order: int = 6, word_order: int = 0, beta: int = 2, lowercase: bool = False,
                 whitespace: bool = False, eps_smoothing: bool = False) -> None:
        if char_order < 1 or word_order < 0 or beta < 0:
            raise ValueError("chrF needs char_order >= 1, word_order >= 0 and beta >= 0")
        self._chrf = CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase,
                          whitespace=whitespace, eps_smoothing=eps_smoothing)
        self._chrf.num_refs = 1
        self.name = "chrf++" if word_order == 2 and char_order == 6 and beta == 2 else "chrf"
        self.char_order, self.word_order = char_order, word_order
        self.lowercase, self.whitespace = lowercase, whitespace

    def _counters(self, text: str) -> list[Counter]:
        if self.lowercase:
            text = text.lower()
        counters = _char_counters(text, self.char_order, self.whitespace)
        if self.word_order:
            words = self._chrf._remove_punctuation(text)
            for n in range(1, self.word_order + 1):
                counters.append(Counter(zip(*[words[i:] for i in range(n)])))
        return counters

    def segment_stats(self, hyp: str, ref: str) -> list[int]:
        """Identical to ``CHRF._compute_segment_statistics`` with one reference."""
        out: list[int] = []
        for h, r in zip(self._counters(hyp), self._counters(ref)):
            out += [sum(h.values()) if r else 0, sum(r.values()), sum((h & r).values())]
        return out

    def item_stats(self, hyps: Sequence[str], refs: Sequence[str]) -> list[list[int]]:
        check_pairs(hyps, refs)
        if self.word_order == 0 and len(hyps) >= 32:
            out: list[list[int]] = []
            for lo in range(0, len(hyps), _BATCH):  # bounded memory: ~20 MB per array per batch
                hs = [_prep(h, self.lowercase, self.whitespace) for h in hyps[lo:lo + _BATCH]]
                rs = [_prep(r, self.lowercase, self.whitespace) for r in refs[lo:lo + _BATCH]]
                stats = _vectorized_stats(hs, rs, self.char_order)
                if stats is None:
                    out += [self.segment_stats(h, r) for h, r in zip(hyps[lo:lo + _BATCH], refs[lo:lo + _BATCH])]
                else:
                    out += stats.tolist()
            return out
        return [self.segment_stats(h, r) for h, r in zip(hyps, refs)]

    def score_from_totals(self, totals: Sequence[int]) -> float:
        return self._chrf._compute_f_score([int(x) for x in totals]) / 100.0

    def item_scores_from_stats(self, stats: Sequence[Sequence[int]]) -> list[float]:
        f = self._chrf._compute_f_score
        return [f(list(s)) / 100.0 for s in stats]

    def signature(self) -> str:
        return f"{self.name}|{self._chrf.get_signature()}|scale:0-1"


def _chrf_plus_plus(**options: Any) -> ChrfMetric:
    """chrF++: chrF with word bigrams (``word_order=2`` unless given)."""
    options.setdefault("word_order", 2)
    return ChrfMetric(**options)


METRICS = {"chrf": ChrfMetric, "chrf++": _chrf_plus_plus}
