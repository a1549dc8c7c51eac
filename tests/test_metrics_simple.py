"""Exact match, labels (vs scikit-learn), JSON validity/schema, OpenAI-style graders, the registry."""

from __future__ import annotations

import pytest
from rapidfuzz import fuzz
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

from protege.evals.metrics.exact import ExactMatch
from protege.evals.metrics.graders import StringCheck, TextSimilarity, grader_from_config
from protege.evals.metrics.jsonmetrics import JsonSchemaValid, JsonValid
from protege.evals.metrics.labels import MISSING, LabelAccuracy, LabelExtractor, LabelF1
from protege.evals.metrics import available_metrics, get_metric
from protege.evals.metrics.rouge import UnicodeTokenizer


# -- exact match ---------------------------------------------------------------------------------
def test_exact_match_normalisation_switches() -> None:
    hyps = ["Paris", " paris ", "Paris.", "New   York", "Paris!"]
    refs = ["Paris"] * 3 + ["New York", "paris"]
    assert ExactMatch().item_scores(hyps, refs) == [1, 0, 0, 1, 0]
    assert ExactMatch(ignore_case=True).item_scores(hyps, refs) == [1, 1, 0, 1, 0]
    assert ExactMatch(ignore_case=True, ignore_punctuation=True).item_scores(hyps, refs) == [1, 1, 1, 1, 1]
    assert ExactMatch(strip=False, collapse_whitespace=False).item_scores([" Paris"], ["Paris"]) == [0]
    assert ExactMatch().corpus_score(hyps, refs) == pytest.approx(0.4)
    sig = ExactMatch(ignore_case=True).signature()
    assert "case:insensitive" in sig and "punct:keep" in sig and ExactMatch.scale == "binary"


# -- labels --------------------------------------------------------------------------------------
Y_TRUE = ["pos", "neg", "neu", "pos", "neg", "pos", "neu", "neu"]
Y_PRED = ["pos", "neg", "pos", "pos", "neu", "neg", "neu", "rare"]


def test_label_report_matches_sklearn_with_explicit_average() -> None:
    m = LabelAccuracy()
    rep = m.report(Y_PRED, Y_TRUE)
    labels = sorted(set(Y_TRUE) | set(Y_PRED))
    assert rep.labels == labels
    assert rep.accuracy == pytest.approx(4 / 8)
    kw = dict(labels=labels, average="macro", zero_division=0.0)
    assert rep.precision == pytest.approx(precision_score(Y_TRUE, Y_PRED, **kw))
    assert rep.recall == pytest.approx(recall_score(Y_TRUE, Y_PRED, **kw))
    assert rep.f1 == pytest.approx(f1_score(Y_TRUE, Y_PRED, **kw))
    assert rep.confusion == confusion_matrix(Y_TRUE, Y_PRED, labels=labels).tolist()
    assert m.item_scores(Y_PRED, Y_TRUE) == [1, 1, 0, 1, 0, 0, 1, 0]
    f1 = LabelF1()
    assert f1.corpus_score(Y_PRED, Y_TRUE) == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro", zero_division=0))
    assert "average:macro" in f1.signature() and "zero_division:0.0" in f1.signature()


def test_label_extraction_from_regex_and_json() -> None:
    rx = LabelExtractor(source="regex", pattern=r"Answer:\s*(\w+)", lowercase=True)
    assert rx.extract("Reasoning...\nAnswer: Positive") == "positive"
    assert rx.extract("no answer here") == MISSING
    js = LabelExtractor(source="json", field="result.label")
    assert js.extract('{"result": {"label": "spam"}}') == "spam"
    assert js.extract('{"result": {}}') == MISSING
    assert js.extract("not json") == MISSING
    m = LabelAccuracy(source="json", field="label")
    assert m.item_scores(['{"label": "a"}', "oops", '{"label": "b"}'],
                         ['{"label": "a"}', '{"label": "a"}', '{"label": "a"}']) == [1, 0, 0]
    assert m.report(["oops"], ['{"label": "a"}']).missing == 1
    assert "json[label]" in m.signature()


def test_label_bad_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs a pattern"):
        LabelExtractor(source="regex")
    with pytest.raises(ValueError, match="invalid label regex"):
        LabelExtractor(source="regex", pattern="(")
    with pytest.raises(ValueError, match="no group"):
        LabelExtractor(source="regex", pattern="a(b)", group=3).extract("ab")
    with pytest.raises(ValueError, match="average"):
        LabelF1(average="binary")


# -- JSON ----------------------------------------------------------------------------------------
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
          "required": ["name"], "additionalProperties": False}


def test_json_validity_and_schema() -> None:
    outs = ['{"name": "Ada", "age": 36}', '{"name": "Ada", "age": -1}', '{"age": 3}', "{not json", '```json\n{"name": "x"}\n```']
    assert JsonValid().item_scores(outs) == [1, 1, 1, 0, 0]
    assert JsonValid(allow_fences=True).item_scores(outs) == [1, 1, 1, 0, 1]
    m = JsonSchemaValid(SCHEMA)
    assert m.item_scores(outs, [""] * 5) == [1, 0, 0, 0, 0]
    assert m.errors(outs[1]) and "age" in m.errors(outs[1])[0]
    assert m.errors("nope") == ["not valid JSON"]
    assert "schema:sha256:" in m.signature()
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        JsonSchemaValid({"type": "no-such-type"})


# -- OpenAI-style graders ------------------------------------------------------------------------
def test_string_check_operations() -> None:
    hyps, refs = ["Paris", "paris is nice", "Lyon"], ["Paris", "Paris", "Paris"]
    assert StringCheck("eq").item_scores(hyps, refs) == [1, 0, 0]
    assert StringCheck("ne").item_scores(hyps, refs) == [0, 1, 1]
    assert StringCheck("like").item_scores(hyps, refs) == [1, 0, 0]
    assert StringCheck("ilike").item_scores(hyps, refs) == [1, 1, 0]
    with pytest.raises(ValueError, match="operation"):
        StringCheck("contains")


def test_text_similarity_metrics_and_pass_threshold() -> None:
    h, r = "The cat sat on the mat", "the cat sat on a mat"
    assert TextSimilarity("fuzzy_match").similarity([h], [r]) == [fuzz.ratio(h, r) / 100]
    assert TextSimilarity("bleu").similarity([h], [r]) == [BLEU(effective_order=True).sentence_score(h, [r]).score / 100]
    sc = rouge_scorer.RougeScorer(["rouge3", "rougeL"], tokenizer=UnicodeTokenizer()).score(r, h)
    assert TextSimilarity("rouge_3").similarity([h], [r]) == [sc["rouge3"].fmeasure]
    assert TextSimilarity("rouge_l").similarity([h], [r]) == [sc["rougeL"].fmeasure]
    sim = TextSimilarity("fuzzy_match").similarity([h], [r])[0]
    assert TextSimilarity("fuzzy_match", pass_threshold=sim).item_scores([h], [r]) == [1.0]  # >= passes
    assert TextSimilarity("fuzzy_match", pass_threshold=sim + 1e-9).item_scores([h], [r]) == [0.0]
    assert TextSimilarity("fuzzy_match", pass_threshold=0.5).scale == "binary"
    with pytest.raises(ValueError, match="evaluation_metric"):
        TextSimilarity("meteor")
    with pytest.raises(ValueError, match="pass_threshold"):
        TextSimilarity("bleu", pass_threshold=2)


def test_grader_from_openai_config() -> None:
    g = grader_from_config({"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
                            "reference": "{{item.answer}}", "evaluation_metric": "rouge_1", "pass_threshold": 0.6})
    assert g.name == "sim" and g.pass_threshold == 0.6
    s = grader_from_config({"type": "string_check", "operation": "ilike", "name": "has"})
    assert s.item_scores(["x PARIS y"], ["paris"]) == [1.0]
    with pytest.raises(ValueError, match="unsupported grader type"):
        grader_from_config({"type": "python"})


def test_registry_builds_every_metric() -> None:
    names = available_metrics()
    for required in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "label_accuracy",
                     "macro_f1", "json_valid", "json_schema", "string_check", "text_similarity", "judge"):
        assert required in names
    options = {"json_schema": {"schema": SCHEMA}, "judge": {"model": "judge-model", "base_url": "http://127.0.0.1:9/v1",
                                                            "api_key": "test"}}
    for name in names:
        m = get_metric(name, **options.get(name, {}))
        assert m.signature() and m.kind in ("mean", "corpus") and m.scale in ("binary", "continuous")
    with pytest.raises(ValueError, match="bad options for metric 'bleu'"):
        get_metric("bleu", colour="blue")
