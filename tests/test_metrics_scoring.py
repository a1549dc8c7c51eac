"""score_pairs: the fast batch path gives exactly what sacrebleu / rouge-score give pair by pair."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from protege.evals import scoring
from protege.evals.metrics.base import Metric, MetricResult, Scores
from protege.evals.metrics.bleu import BleuMetric
from protege.evals.metrics.exact import ExactMatch
from protege.evals.metrics.jsonmetrics import JsonValid
from protege.evals.metrics.rouge import UnicodeTokenizer
from protege.evals.scoring import DEFAULT_METRICS, score_pairs


def pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = ["the", "cat", "sat", "on", "mat", "quick", "brown", "fox", "über", "café", "猫", "кот", "3.5", ",", "."]
    refs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 30))) for _ in range(n)]
    hyps = [" ".join(w for w in r.split() if rng.random() > 0.2) if rng.random() > 0.2 else r for r in refs]
    return hyps, refs


def expected(hyps: list[str], refs: list[str]) -> dict[str, tuple[float, list[float]]]:
    sb, ch = BLEU(effective_order=True), CHRF()
    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeTokenizer())
    rs = [sc.score(r, h) for h, r in zip(hyps, refs)]
    out = {
        "bleu": (BLEU().corpus_score(hyps, [refs]).score / 100,
                 [sb.sentence_score(h, [r]).score / 100 for h, r in zip(hyps, refs)]),
        "chrf": (CHRF().corpus_score(hyps, [refs]).score / 100,
                 [ch.sentence_score(h, [r]).score / 100 for h, r in zip(hyps, refs)]),
        "exact_match": (None, [float(h.strip() == r.strip()) for h, r in zip(hyps, refs)]),
    }
    for t in ("rouge1", "rouge2", "rougeL"):
        out[t] = (None, [s[t].fmeasure for s in rs])
    return {k: (sum(v) / len(v) if c is None else c, v) for k, (c, v) in out.items()}


def check(results: dict, want: dict) -> None:
    assert list(results) == list(DEFAULT_METRICS)
    for name, (corpus, items) in want.items():
        assert results[name].items == items, name
        assert results[name].corpus == pytest.approx(corpus, abs=1e-12), name


def test_serial_path_equals_reference_libraries() -> None:
    hyps, refs = pairs(300)
    check(score_pairs(hyps, refs, workers=1), expected(hyps, refs))


def test_process_pool_path_equals_reference_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "PARALLEL_MIN_PAIRS", 10)
    monkeypatch.setattr(scoring, "_can_fork", lambda: True)  # pytest plugins may hold threads; forking is fine here
    used = []
    original = scoring._run_parallel
    monkeypatch.setattr(scoring, "_run_parallel", lambda *a: used.append(a[-1]) or original(*a))
    hyps, refs = pairs(120, seed=1)
    res = score_pairs(hyps, refs, workers=2)
    assert used == [2]
    check(res, expected(hyps, refs))
    assert len(res["bleu"].stats) == 120 and res["rouge1"].stats is None


def test_no_fork_while_other_threads_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setattr(scoring, "PARALLEL_MIN_PAIRS", 10)
    monkeypatch.setattr(scoring, "_run_parallel", lambda *a: pytest.fail("forked with threads alive"))
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        hyps, refs = pairs(40, seed=4)
        check(score_pairs(hyps, refs, workers=2), expected(hyps, refs))
    finally:
        stop.set()
        t.join()


def test_duplicate_pairs_are_scored_once_but_reported_per_item(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = scoring._Plan.run

    def spy(self, hyps, refs):
        calls.append(len(hyps))
        return original(self, hyps, refs)

    monkeypatch.setattr(scoring._Plan, "run", spy)
    hyps = ["a b c", "a b c", "x y", "a b c"]
    refs = ["a b c d", "a b c d", "x y", "a b"]
    res = score_pairs(hyps, refs, workers=1)
    assert calls == [3]
    assert res["bleu"].items[0] == res["bleu"].items[1] and len(res["exact_match"].items) == 4
    assert res["exact_match"].items == [0.0, 0.0, 1.0, 0.0]
    check(res, expected(hyps, refs))


def test_options_instances_generic_metrics_and_bootstrap() -> None:
    hyps, refs = pairs(80, seed=2)
    res = score_pairs(hyps, refs, ["bleu", ExactMatch(ignore_case=True), "json_valid", "rougeLsum"],
                      options={"bleu": {"tokenize": "char"}}, bootstrap=200, seed=3)
    assert "tok:char" in res["bleu"].signature
    assert res["bleu"].corpus == BleuMetric(tokenize="char").corpus_score(hyps, refs)
    assert res["json_valid"].items == JsonValid().item_scores(hyps)  # generic (non-fast) metrics work too
    ci = res["bleu"].ci
    assert ci is not None and ci.n_resamples == 200 and ci.low <= res["bleu"].corpus <= ci.high
    json.dumps({k: dataclasses.asdict(v) for k, v in res.items()})


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="must pair up"):
        score_pairs(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        score_pairs(["a"], ["a"], ["bleu", "bleu"])
    with pytest.raises(ValueError, match="unknown metric"):
        score_pairs(["a"], ["a"], ["blue"])


class _Overlap(Metric):
    """A metric the scorer has never heard of: the share of reference words (``side="ref"``) or output
    words (``side="hyp"``) found on the other side. Both sides share one tokenisation per pair."""

    batchable = True
    passes: list[int] = []  # pairs seen by each shared pass (class-level: one list for the test)

    def __init__(self, side: str) -> None:
        self.side, self.name = side, f"overlap_{side}"

    def _one(self, h: str, r: str) -> float:
        hw, rw = set(h.split()), set(r.split())
        mine, other = (rw, hw) if self.side == "ref" else (hw, rw)
        return len(mine & other) / len(mine) if mine else 0.0

    def item_scores(self, hyps, refs):
        return [self._one(h, r) for h, r in zip(hyps, refs)]

    def group_key(self):
        return "words"

    @classmethod
    def score_group(cls, metrics, hyps, refs):
        cls.passes.append(len(hyps))
        return {m.name: Scores(m.item_scores(hyps, refs)) for m in metrics}

    def signature(self) -> str:
        return f"{self.name}|test"


def test_a_new_metric_needs_nothing_from_the_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path asks the metric (batchable, group_key, score_group, result): a metric defined
    outside protege is deduplicated, scored in one shared pass with its group, forked, and typed."""
    hyps, refs = pairs(60, seed=5)
    hyps, refs = hyps + hyps[:10], refs + refs[:10]  # 10 repeated pairs
    metrics = [_Overlap("ref"), "bleu", _Overlap("hyp")]
    _Overlap.passes.clear()
    res = score_pairs(hyps, refs, metrics, workers=1, bootstrap=100)
    assert _Overlap.passes == [len(set(zip(hyps, refs)))]  # one pass for both, over distinct pairs
    for side in ("ref", "hyp"):
        r = res[f"overlap_{side}"]
        assert isinstance(r, MetricResult) and r.items == _Overlap(side).item_scores(hyps, refs)
        assert r.corpus == pytest.approx(sum(r.items) / len(r.items)) and r.ci is not None and r.stats is None
    monkeypatch.setattr(scoring, "PARALLEL_MIN_PAIRS", 10)
    monkeypatch.setattr(scoring, "_can_fork", lambda: True)
    forked = score_pairs(hyps, refs, metrics, workers=2)
    assert {k: v.items for k, v in forked.items()} == {k: v.items for k, v in res.items()}
