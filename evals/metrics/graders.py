"""OpenAI Evals-style graders: ``string_check`` and ``text_similarity``.

Semantics follow the OpenAI graders API: ``string_check`` compares the output ("input" in OpenAI's
terms) with the reference using ``eq``, ``ne``, ``like`` (output contains reference, case-sensitive)
or ``ilike`` (contains, case-insensitive), scoring 1 or 0. ``text_similarity`` computes a 0-1
similarity and passes when it is ``>= pass_threshold``.

OpenAI does not publish which implementations it uses, so Protege states its own (in the signature):
``fuzzy_match`` = ``rapidfuzz.fuzz.ratio / 100`` on the raw strings; ``bleu`` = sacrebleu sentence
BLEU (13a, exp smoothing, effective order) / 100; ``rouge_N``/``rouge_l`` = rouge-score F-measure
with Protege's Unicode tokenizer. Item scores are the pass/fail (binary) when a threshold is set --
that is what an OpenAI eval reports as its pass rate -- and the raw similarity otherwise.
"""

from __future__ import annotations

from typing import Any, Sequence

import rapidfuzz
from rapidfuzz import fuzz

from protege.evals.metrics.base import Metric, check_pairs
from protege.evals.metrics.bleu import BleuMetric
from protege.evals.metrics.rouge import RougeFamily

STRING_CHECK_OPERATIONS = ("eq", "ne", "like", "ilike")
SIMILARITY_METRICS = ("fuzzy_match", "bleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")


class StringCheck(Metric):
    kind = "mean"
    scale = "binary"

    def __init__(self, operation: str = "eq", name: str | None = None) -> None:
        if operation not in STRING_CHECK_OPERATIONS:
            raise ValueError(f"string_check operation must be one of {', '.join(STRING_CHECK_OPERATIONS)}, "
                             f"not {operation!r}")
        self.operation = operation
        self.name = name or f"string_check_{operation}"

    def check(self, output: str, reference: str) -> bool:
        op = self.operation
        if op == "eq":
            return output == reference
        if op == "ne":
            return output != reference
        if op == "like":
            return reference in output
        return reference.lower() in output.lower()

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        check_pairs(hyps, refs)
        return [1.0 if self.check(h, r) else 0.0 for h, r in zip(hyps, refs)]

    def signature(self) -> str:
        return f"string_check|op:{self.operation}"


class TextSimilarity(Metric):
    kind = "mean"

    def __init__(self, evaluation_metric: str = "fuzzy_match", pass_threshold: float | None = None,
                 name: str | None = None) -> None:
        if evaluation_metric not in SIMILARITY_METRICS:
            raise ValueError(f"text_similarity evaluation_metric must be one of {', '.join(SIMILARITY_METRICS)}, "
                             f"not {evaluation_metric!r}")
        if pass_threshold is not None and not 0.0 <= float(pass_threshold) <= 1.0:
            raise ValueError(f"pass_threshold must be between 0 and 1, not {pass_threshold!r}")
        self.evaluation_metric = evaluation_metric
        self.pass_threshold = None if pass_threshold is None else float(pass_threshold)
        self.scale = "continuous" if pass_threshold is None else "binary"
        self.name = name or f"text_similarity_{evaluation_metric}"
        self._bleu = BleuMetric() if evaluation_metric == "bleu" else None
        self._rouge = None
        if evaluation_metric.startswith("rouge_"):
            suffix = evaluation_metric[6:]
            self._rouge_type = "rougeL" if suffix == "l" else f"rouge{suffix}"
            self._rouge = RougeFamily([self._rouge_type])

    def similarity(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        """Raw 0-1 similarity per item, whatever the threshold."""
        check_pairs(hyps, refs)
        if self._bleu is not None:
            return self._bleu.item_scores(hyps, refs)
        if self._rouge is not None:
            return self._rouge.fmeasures(hyps, refs)[self._rouge_type]
        return [fuzz.ratio(h, r) / 100.0 for h, r in zip(hyps, refs)]

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        sims = self.similarity(hyps, refs)
        if self.pass_threshold is None:
            return sims
        return [1.0 if s >= self.pass_threshold else 0.0 for s in sims]

    def signature(self) -> str:
        impl = {"fuzzy_match": f"rapidfuzz.fuzz.ratio/100:{rapidfuzz.__version__}"}
        if self._bleu is not None:
            impl["bleu"] = f"sentence-bleu[{self._bleu.signature()}]"
        if self._rouge is not None:
            impl[self.evaluation_metric] = self._rouge.signature_for(self._rouge_type)
        thr = "none" if self.pass_threshold is None else f">={self.pass_threshold:g}"
        return f"text_similarity|metric:{self.evaluation_metric}|pass:{thr}|{impl[self.evaluation_metric]}"


def grader_from_config(config: dict[str, Any]) -> Metric:
    """Build a metric from an OpenAI grader/testing-criterion object (``type`` + its fields).

    The ``input``/``reference`` templates are the caller's business (eval runs fill them in)."""
    if not isinstance(config, dict):
        raise ValueError("a grader config must be a JSON object")
    kind = config.get("type")
    if kind == "string_check":
        return StringCheck(config.get("operation", "eq"), name=config.get("name"))
    if kind == "text_similarity":
        return TextSimilarity(config.get("evaluation_metric", "fuzzy_match"), config.get("pass_threshold"),
                              name=config.get("name"))
    raise ValueError(f"unsupported grader type {kind!r}; use 'string_check' or 'text_similarity'")


METRICS = {"string_check": StringCheck, "text_similarity": TextSimilarity}
