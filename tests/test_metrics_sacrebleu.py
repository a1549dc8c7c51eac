"""BLEU and chrF equal sacrebleu called directly (corpus and sentence level), on a 0-1 scale."""

from __future__ import annotations

import random

import pytest
from sacrebleu.metrics import BLEU, CHRF

from protege.evals.metrics.bleu import BleuMetric
from protege.evals.metrics.chrf import ChrfMetric
from protege.evals.metrics import get_metric

HYPS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over a lazy dog!",
    "the cat",
    "",
    "Numbers like 3.14 and 1,000 stay together, don't they?",
    "Totally unrelated output here",
]
REFS = [
    "The cat is sitting on the mat.",
    "The quick brown fox jumps over the lazy dog.",
    "the cat sat on the mat",
    "Nothing was produced.",
    "Numbers like 3.14 and 1,000 stay together, do they not?",
    "The weather is nice today.",
]


def random_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = ["the", "a", "cat", "dog", "sat", "on", "mat", "quick", "brown", "fox", "3.5", "don't", "e-mail",
             "(yes)", "&amp;", "naïve", "café", "—", "Über", ",", ".", "?", "!", "\"quoted\""]
    hyps, refs = [], []
    for _ in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 25))]
        hyp = [w if rng.random() > 0.3 else rng.choice(vocab) for w in ref if rng.random() > 0.1]
        hyps.append(" ".join(hyp))
        refs.append(" ".join(ref))
    return hyps, refs


def test_bleu_corpus_and_sentence_scores_equal_sacrebleu() -> None:
    m = BleuMetric()
    assert m.corpus_score(HYPS, REFS) == pytest.approx(BLEU().corpus_score(HYPS, [REFS]).score / 100, abs=1e-12)
    sent = BLEU(effective_order=True)
    assert m.item_scores(HYPS, REFS) == [sent.sentence_score(h, [r]).score / 100 for h, r in zip(HYPS, REFS)]


@pytest.mark.parametrize("options", [{}, {"lowercase": True}, {"tokenize": "char"}, {"tokenize": "intl"},
                                     {"smooth_method": "floor", "smooth_value": 0.1}, {"max_ngram_order": 2}])
def test_bleu_item_stats_equal_sacrebleu_internal_stats(options: dict) -> None:
    hyps, refs = random_pairs(300, seed=len(options))
    m = BleuMetric(**options)
    ref = BLEU(force=True, **options)
    assert m.item_stats(hyps, refs) == ref._extract_corpus_statistics(hyps, [refs])
    assert m.corpus_score(hyps, refs) == ref.corpus_score(hyps, [refs]).score / 100
    eff = BLEU(effective_order=True, force=True, **options)
    assert m.item_scores(hyps, refs) == [eff.sentence_score(h, [r]).score / 100 for h, r in zip(hyps, refs)]


def test_reference_layout_is_one_stream_not_per_segment_lists() -> None:
    """sacrebleu wants refs as [stream][segment]; the per-segment layout silently scores 1 segment."""
    hyps = ["the cat sat on the mat", "a dog barked loudly"]
    refs = ["the cat sat on the mat", "the bird sang softly"]
    right = BLEU().corpus_score(hyps, [refs]).score / 100
    wrong = BLEU().corpus_score(hyps, [[r] for r in refs]).score / 100
    assert wrong == pytest.approx(1.0)  # only the (perfect) first segment is scored
    assert right < 0.9
    assert BleuMetric().corpus_score(hyps, refs) == right
    assert ChrfMetric().corpus_score(hyps, refs) == CHRF().corpus_score(hyps, [refs]).score / 100
    assert ChrfMetric().corpus_score(hyps, refs) != CHRF().corpus_score(hyps, [[r] for r in refs]).score / 100


@pytest.mark.parametrize("options", [{}, {"lowercase": True}, {"whitespace": True}, {"char_order": 4, "beta": 1},
                                     {"word_order": 2}, {"eps_smoothing": True}])
def test_chrf_equals_sacrebleu(options: dict) -> None:
    hyps, refs = random_pairs(200, seed=7)
    hyps, refs = hyps + HYPS, refs + REFS
    m = ChrfMetric(**options)
    ref = CHRF(**options)
    assert m.item_stats(hyps, refs) == ref._extract_corpus_statistics(hyps, [refs])
    assert m.corpus_score(hyps, refs) == ref.corpus_score(hyps, [refs]).score / 100
    assert m.item_scores(hyps, refs) == [ref.sentence_score(h, [r]).score / 100 for h, r in zip(hyps, refs)]


def test_chrf_vectorised_path_handles_any_script_and_edge_cases() -> None:
    rng = random.Random(3)
    alphabet = "ab c日本語 ñé\t\nабв.,!ไทย"
    hyps = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(400)]
    refs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(400)]
    hyps[:3], refs[:3] = ["", "x", "aaaa"], ["", "", "aa"]
    assert ChrfMetric().item_stats(hyps, refs) == CHRF()._extract_corpus_statistics(hyps, [refs])
    # many distinct characters: the packed-int path does not fit and must fall back, still exact
    wide = ["".join(chr(0x4E00 + rng.randrange(5000)) for _ in range(20)) for _ in range(100)]
    wide_r = [w[:10] + "".join(chr(0x4E00 + rng.randrange(5000)) for _ in range(10)) for w in wide]
    assert ChrfMetric().item_stats(wide, wide_r) == CHRF()._extract_corpus_statistics(wide, [wide_r])


@pytest.mark.parametrize("text", ["我喜欢吃苹果，也喜欢吃香蕉。", "Привет, как у тебя дела сегодня?",
                                  "สวัสดีครับ วันนี้อากาศดีมาก", "¿Dónde está la estación de autobuses?"])
def test_identical_non_english_strings_score_one(text: str) -> None:
    assert ChrfMetric().item_scores([text], [text]) == [pytest.approx(1.0, abs=1e-12)]
    assert BleuMetric(tokenize="char").item_scores([text], [text]) == [pytest.approx(1.0, abs=1e-12)]
    assert BleuMetric(tokenize="char").corpus_score([text], [text]) == pytest.approx(1.0, abs=1e-12)


def test_bleu_13a_on_unsegmented_chinese_is_zero_and_char_tokenizer_fixes_it() -> None:
    hyp, ref = "我喜欢吃苹果", "我喜欢吃香蕉"
    assert BleuMetric().item_scores([hyp], [ref]) == [0.0]
    assert BleuMetric(tokenize="zh").item_scores([hyp], [ref])[0] > 0.3
    assert "tok:char" in BleuMetric(tokenize="char").signature()


def test_effective_order_keeps_short_sentences_nonzero() -> None:
    assert BleuMetric().item_scores(["the cat sat"], ["the cat sat on the mat"])[0] == pytest.approx(0.3679, abs=1e-4)


def test_signatures_state_settings_and_scale() -> None:
    sig = get_metric("bleu").signature()
    for part in ("nrefs:1", "tok:13a", "smooth:exp", "version:", "item:sentence-eff", "scale:0-1"):
        assert part in sig
    assert "nc:6" in get_metric("chrf").signature()
    assert "nw:2" in get_metric("chrf++").signature()


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown BLEU tokenizer 'nope'"):
        get_metric("bleu", tokenize="nope")
    with pytest.raises(ValueError, match="smooth_method"):
        get_metric("bleu", smooth_method="magic")
    with pytest.raises(ValueError, match="char_order"):
        get_metric("chrf", char_order=0)


def test_mismatched_lengths_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="2 outputs but 1 references"):
        BleuMetric().corpus_score(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        ChrfMetric().item_scores([None], ["a"])  # type: ignore[list-item]
