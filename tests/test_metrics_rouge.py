"""ROUGE equals Google's rouge-score called directly (target first!), Unicode-aware by default."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer

from protege.evals.metrics import get_metric
from protege.evals.metrics.rouge import RougeFamily, RougeMetric, UnicodeTokenizer, split_sentences

TYPES = ["rouge1", "rouge2", "rouge3", "rougeL", "rougeLsum"]


def random_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = ["the", "cat", "sat", "on", "mat", "dog", "ran", "Über", "café", "naïve", "猫", "在", "垫子", "上",
             "кот", "сидел", "แมว", "42", "3.5", "don't", "e-mail", ".", "!", "?", "\n"]
    hyps, refs = [], []
    for _ in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 30))]
        hyp = [w if rng.random() > 0.3 else rng.choice(vocab) for w in ref if rng.random() > 0.15]
        if rng.random() < 0.3:
            rng.shuffle(hyp)
        hyps.append(" ".join(hyp))
        refs.append(" ".join(ref))
    return hyps, refs


@pytest.mark.parametrize("tokenizer,stem", [("unicode", False), ("default", False), ("default", True)])
def test_all_types_equal_rouge_score_exactly(tokenizer: str, stem: bool) -> None:
    hyps, refs = random_pairs(300, seed=("unicode", "default").index(tokenizer) * 2 + stem)
    fam = RougeFamily(TYPES, tokenizer=tokenizer, use_stemmer=stem)
    tok = UnicodeTokenizer() if tokenizer == "unicode" else None
    ref = rouge_scorer.RougeScorer(TYPES, use_stemmer=stem, tokenizer=tok)
    for h, r in zip(hyps, refs):
        got = fam.score_pair(h, r)
        want = ref.score(r, h)  # rouge-score takes the TARGET (reference) first
        for t in TYPES:
            if t == "rougeLsum":
                want_t = ref.score("\n".join(split_sentences(r)), "\n".join(split_sentences(h)))[t]
            else:
                want_t = want[t]
            assert got[t] == (want_t.precision, want_t.recall, want_t.fmeasure), (t, h, r)


def test_argument_order_precision_is_over_output_recall_over_reference() -> None:
    fam = RougeFamily(["rouge1"])
    p, r, _ = fam.score_pair("the cat", "the cat sat on the mat")["rouge1"]  # output, reference
    assert (p, r) == (1.0, pytest.approx(2 / 6))


@pytest.mark.parametrize("text", ["我喜欢吃苹果，也喜欢吃香蕉。", "Привет, как у тебя дела сегодня?",
                                  "สวัสดีครับ วันนี้อากาศดีมาก", "¿Dónde está la estación de autobuses?",
                                  "नमस्ते दुनिया", "日本語のテキストです"])
def test_identical_non_english_strings_score_one(text: str) -> None:
    for t in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert RougeMetric(t).item_scores([text], [text]) == [1.0], t
    # the pitfall this default avoids: rouge-score's own tokenizer drops non-ASCII
    if not any(c.isascii() and c.isalpha() for c in text):
        assert RougeMetric("rouge1", tokenizer="default").item_scores([text], [text]) == [0.0]


def test_unicode_tokenizer_and_signature() -> None:
    tok = UnicodeTokenizer()
    assert tok.tokenize("Cristóbal está AQUÍ, 42!") == ["cristóbal", "está", "aquí", "42"]
    assert tok.tokenize("我喜欢") == ["我", "喜", "欢"]
    assert "tok:unicode" in RougeMetric("rouge1").signature()
    assert "tok:default|stem:yes" in RougeMetric("rougeL", tokenizer="default", use_stemmer=True).signature()
    assert "sent:rule" in get_metric("rougeLsum").signature()


def test_sentence_split_for_rouge_lsum() -> None:
    assert split_sentences("One here. Two there! Three? 四。五！\nSix") == \
        ["One here.", "Two there!", "Three?", "四。", "五！", "Six"]
    # reordered sentences: rougeLsum credits each sentence, rougeL does not
    hyp, ref = "The dog barked. The cat slept.", "The cat slept. The dog barked."
    assert RougeMetric("rougeLsum").item_scores([hyp], [ref]) == [1.0]
    assert RougeMetric("rougeL").item_scores([hyp], [ref])[0] < 1.0


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown ROUGE type"):
        RougeFamily(["rougeX"])
    with pytest.raises(ValueError, match="use_stemmer"):
        RougeMetric("rouge1", use_stemmer=True)
    with pytest.raises(ValueError, match="unknown metric"):
        get_metric("rogue1")
