"""Bootstrap CIs (coverage in simulation), paired differences, McNemar (hand-computed), kappa (sklearn)."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest
from sacrebleu.metrics import BLEU
from sklearn.metrics import cohen_kappa_score

from protege.evals.metrics.bleu import BleuMetric
from protege.evals.metrics.chrf import ChrfMetric
from protege.evals.metrics.exact import ExactMatch
from protege.evals.metrics.labels import LabelF1
from protege.evals.metrics.rouge import RougeMetric
from protege.evals.stats import (_index_chunks, _resampled, bootstrap_ci, bootstrap_ci_data, cohen_kappa, mcnemar,
                                 paired_difference, paired_difference_data)


def test_bootstrap_ci_covers_true_mean_at_nominal_rate() -> None:
    rng = np.random.default_rng(1)
    true_mean = 0.3 / (0.3 + 0.5)  # Beta(0.3, 0.5): skewed, bimodal item scores, like per-item ROUGE
    hits = 0
    for i in range(200):
        scores = rng.beta(0.3, 0.5, size=80)
        ci = bootstrap_ci_data(None, scores, seed=i, n_resamples=1000)
        hits += ci.low <= true_mean <= ci.high
    assert 0.90 <= hits / 200 <= 0.98


def test_bootstrap_is_seeded_and_reports_its_settings() -> None:
    scores = [0.0, 1.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.75]
    a = bootstrap_ci_data(None, scores, seed=7)
    assert a == bootstrap_ci_data(None, scores, seed=7)
    assert a != bootstrap_ci_data(None, scores, seed=8)
    assert a.estimate == pytest.approx(np.mean(scores)) and a.low <= a.estimate <= a.high
    assert (a.n, a.n_resamples, a.seed, a.confidence) == (8, 1000, 7, 0.95)
    json.dumps(dataclasses.asdict(a))
    with pytest.raises(ValueError, match="zero items"):
        bootstrap_ci_data(None, [], seed=0)


def _pairs(n: int, seed: int, noise: float) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 20))) for _ in range(n)]
    hyps = [" ".join(w if rng.random() > noise else rng.choice(words) for w in r.split()) for r in refs]
    return hyps, refs


def test_corpus_metrics_resample_sufficient_stats_exactly() -> None:
    hyps, refs = _pairs(120, seed=3, noise=0.3)
    for metric in (BleuMetric(), ChrfMetric()):
        stats = metric.item_stats(hyps, refs)
        idx = next(_index_chunks(np.random.default_rng(0), len(stats), 50))
        fast = _resampled(metric, stats, idx)  # one matrix product for all resamples
        slow = [metric.aggregate_stats([stats[i] for i in row]) for row in idx]
        assert fast.tolist() == slow
        # and aggregate_stats on a resample equals sacrebleu re-scoring the resampled corpus
        row = idx[0]
        if isinstance(metric, BleuMetric):
            want = BLEU().corpus_score([hyps[i] for i in row], [[refs[i] for i in row]]).score / 100
            assert slow[0] == want
        ci = bootstrap_ci(metric, hyps, refs, seed=0)
        assert ci.low < ci.estimate < ci.high and ci.estimate == metric.corpus_score(hyps, refs)


def test_macro_f1_bootstrap_resamples_label_pairs_like_sklearn() -> None:
    rng = random.Random(0)
    true = [rng.choice("abcd") for _ in range(60)]
    pred = [t if rng.random() < 0.6 else rng.choice("abcde") for t in true]
    metric = LabelF1()
    stats = metric.item_stats(pred, true)
    idx = next(_index_chunks(np.random.default_rng(0), len(stats), 100))
    fast = _resampled(metric, stats, idx)  # vectorised confusion matrices
    slow = [metric.aggregate_stats([stats[i] for i in row]) for row in idx]  # sklearn f1_score per resample
    assert fast.tolist() == pytest.approx(slow, abs=1e-12)
    ci = bootstrap_ci(metric, pred, true, seed=0)
    assert ci.low <= ci.estimate <= ci.high and ci.estimate == pytest.approx(metric.corpus_score(pred, true))


def test_mcnemar_exact_matches_hand_computation() -> None:
    # b = 2 (a right, b wrong), c = 8 (a wrong, b right), 10 concordant
    a = [1] * 2 + [0] * 8 + [1] * 5 + [0] * 5
    b = [0] * 2 + [1] * 8 + [1] * 5 + [0] * 5
    r = mcnemar(a, b)
    assert (r.b, r.c, r.n, r.exact) == (2, 8, 20, True)
    # two-sided exact binomial: 2 * P(X <= 2 | n=10, p=.5) = 2 * (1 + 10 + 45) / 1024
    assert r.p_value == pytest.approx(2 * 56 / 1024)


def test_mcnemar_chi_square_for_many_discordant_pairs() -> None:
    a = [1] * 10 + [0] * 30
    b = [0] * 10 + [1] * 30
    r = mcnemar(a, b)
    stat = (abs(10 - 30) - 1) ** 2 / 40  # continuity-corrected
    assert not r.exact and r.statistic == pytest.approx(stat)
    assert r.p_value == pytest.approx(math.erfc(math.sqrt(stat / 2)))  # chi2(1) survival function
    assert mcnemar([1, 0], [1, 0]).p_value == 1.0
    with pytest.raises(ValueError, match="paired"):
        mcnemar([1, 0], [1])


def test_paired_difference_binary_uses_mcnemar() -> None:
    refs = ["yes"] * 40
    teacher = ["yes"] * 36 + ["no"] * 4
    student = ["yes"] * 20 + ["no"] * 20
    r = paired_difference(ExactMatch(), teacher, student, refs, seed=0)
    assert r.test == "mcnemar-exact" and r.diff == pytest.approx(20 / 40 - 36 / 40)
    assert r.high < 0 and r.p_value < 0.001
    assert (r.score_a, r.score_b) == (pytest.approx(0.9), pytest.approx(0.5))
    json.dumps(dataclasses.asdict(r))


def test_paired_bootstrap_for_corpus_and_mean_metrics() -> None:
    student, refs = _pairs(150, seed=5, noise=0.5)
    teacher, _ = _pairs(150, seed=5, noise=0.1)
    for metric in (BleuMetric(), ChrfMetric(), RougeMetric("rougeL")):
        r = paired_difference(metric, teacher, student, refs, seed=1)
        assert r.test == "paired-bootstrap"
        assert r.diff == pytest.approx(metric.corpus_score(student, refs) - metric.corpus_score(teacher, refs))
        assert r.low <= r.diff <= r.high < 0 and r.p_value < 0.01
        same = paired_difference(metric, teacher, teacher, refs, seed=1)
        assert (same.diff, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_is_not_significant_for_equal_systems() -> None:
    rng = np.random.default_rng(0)
    p_values = []
    for i in range(40):
        a, b = rng.random(60), rng.random(60)  # same distribution: H0 true
        p_values.append(paired_difference_data(RougeMetric("rouge1"), a, b, seed=i, n_resamples=500).p_value)
    assert 0.0 <= np.mean(np.array(p_values) < 0.05) <= 0.15


def test_cohen_kappa_matches_sklearn() -> None:
    a = ["pos", "neg", "neu", "pos", "neg", "pos", "neu", "neu", "pos", "neg"]
    b = ["pos", "neg", "pos", "pos", "neu", "neg", "neu", "neu", "pos", "neg"]
    k = cohen_kappa(a, b)
    assert k.kappa == pytest.approx(cohen_kappa_score(a, b)) and k.agreement == pytest.approx(0.7) and k.n == 10
    assert cohen_kappa(["x"] * 5, ["x"] * 5).kappa == 1.0  # sklearn gives NaN here
    json.dumps(dataclasses.asdict(k))
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])
