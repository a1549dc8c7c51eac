"""Bench: score_pairs (fast path) vs a plain per-pair loop over sacrebleu and rouge-score.

Target: 10,000 pairs of ~50-token outputs, BLEU + chrF + ROUGE-1/2/L + exact match, in <= 10 s and
>= 3x faster than the plain loop, with IDENTICAL scores (asserted to 1e-9).

    python bench/bench_metrics.py [--pairs 10000] [--runs 3] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from protege.evals.metrics.exact import ExactMatch
from protege.evals.metrics.rouge import UnicodeTokenizer
from protege.evals.scoring import score_pairs

METRICS = ["bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"]


def synthetic_pairs(n: int, seed: int = 0, vocab_size: int = 5000) -> tuple[list[str], list[str]]:
    """(student, teacher) outputs: teacher ~50 tokens with Zipf-ish word choice and punctuation; the
    student is the teacher with 0-10 word edits (substitutions, deletions, insertions); ~10% verbatim."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(vocab_size)]
    weights = [1.0 / (i + 1) for i in range(vocab_size)]

    def sentence() -> str:
        words = rng.choices(vocab, weights, k=rng.randint(40, 60))
        for i in range(8, len(words), rng.randint(8, 15)):
            words[i] += rng.choice([",", ".", ";"])
        words[0] = words[0].capitalize()
        return " ".join(words) + "."

    teacher, student = [], []
    for _ in range(n):
        t = sentence()
        words = t.split()
        if rng.random() > 0.1:
            for _ in range(rng.randint(1, 10)):
                i = rng.randrange(len(words))
                op = rng.random()
                if op < 0.4:
                    words[i] = rng.choices(vocab, weights)[0]
                elif op < 0.7 and len(words) > 1:
                    del words[i]
                else:
                    words.insert(i, rng.choices(vocab, weights)[0])
        teacher.append(t)
        student.append(" ".join(words))
    return student, teacher


def plain_loop(hyps: list[str], refs: list[str]) -> dict[str, tuple[float, list[float]]]:
    """What one would write without Protege: per-pair sacrebleu/rouge-score calls, plus the corpus scores."""
    sbleu, chrf = BLEU(effective_order=True), CHRF()
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeTokenizer())
    exact = ExactMatch()
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for h, r in zip(hyps, refs):
        out["bleu"].append(sbleu.sentence_score(h, [r]).score / 100)
        out["chrf"].append(chrf.sentence_score(h, [r]).score / 100)
        s = scorer.score(r, h)  # rouge-score: target (reference) first
        for t in ("rouge1", "rouge2", "rougeL"):
            out[t].append(s[t].fmeasure)
        out["exact_match"].append(1.0 if exact.normalize(h) == exact.normalize(r) else 0.0)
    corpus = {
        "bleu": BLEU().corpus_score(hyps, [refs]).score / 100,  # [refs]: one reference stream
        "chrf": CHRF().corpus_score(hyps, [refs]).score / 100,
    }
    return {m: (corpus.get(m, sum(v) / len(v)), v) for m, v in out.items()}


def _clear_caches() -> None:
    Tokenizer13a.__call__.cache_clear()  # sacrebleu's lru_cache would favour whichever runs second


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    hyps, refs = synthetic_pairs(args.pairs)
    n_tokens = sum(len(r.split()) for r in refs) / len(refs)
    plain_t, fast_t = [], []
    for run in range(args.runs):
        _clear_caches()
        t0 = time.perf_counter()
        expected = plain_loop(hyps, refs)
        plain_t.append(time.perf_counter() - t0)
        _clear_caches()
        t0 = time.perf_counter()
        got = score_pairs(hyps, refs, METRICS, workers=args.workers)
        fast_t.append(time.perf_counter() - t0)
        for m in METRICS:
            corpus, items = expected[m]
            assert abs(got[m].corpus - corpus) <= 1e-9, (m, got[m].corpus, corpus)
            assert len(got[m].items) == len(items)
            worst = max(abs(a - b) for a, b in zip(got[m].items, items))
            assert worst <= 1e-9, (m, worst)
        print(f"run {run + 1}: plain {plain_t[-1]:.2f} s, fast {fast_t[-1]:.2f} s", file=sys.stderr)

    p, f = statistics.median(plain_t), statistics.median(fast_t)
    workers = args.workers or os.cpu_count()
    print(f"### Metric scoring: {args.pairs:,} pairs (~{n_tokens:.0f} tokens), BLEU + chrF + ROUGE-1/2/L + exact match\n")
    print("| path | median s | runs (s) |")
    print("|---|---|---|")
    print(f"| plain per-pair loop (sacrebleu + rouge-score) | {p:.2f} | {', '.join(f'{x:.2f}' for x in plain_t)} |")
    print(f"| `score_pairs` ({workers} workers) | {f:.2f} | {', '.join(f'{x:.2f}' for x in fast_t)} |")
    print(f"\n**speed-up {p / f:.1f}x** (target >= 3x, fast <= 10 s); scores identical to the plain loop (|diff| <= 1e-9, asserted)")
    print(f"\ncommand: `python bench/bench_metrics.py --pairs {args.pairs} --runs {args.runs}"
          f"{'' if args.workers is None else f' --workers {args.workers}'}`; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, load avg {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
