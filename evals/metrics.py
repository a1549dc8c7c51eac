"""Metric registry: ``get_metric("bleu", tokenize="char")`` -> a configured :class:`Metric`.

Names are what reports and the store use; options are each metric's constructor arguments.
"""

from __future__ import annotations

from typing import Any, Callable

from protege.evals.base import Metric


def _bleu(**kw: Any) -> Metric:
    from protege.evals.bleu import BleuMetric
    return BleuMetric(**kw)


def _chrf(**kw: Any) -> Metric:
    from protege.evals.chrf import ChrfMetric
    return ChrfMetric(**kw)


def _chrfpp(**kw: Any) -> Metric:
    from protege.evals.chrf import ChrfMetric
    kw.setdefault("word_order", 2)
    return ChrfMetric(**kw)


def _rouge(rouge_type: str) -> Callable[..., Metric]:
    def make(**kw: Any) -> Metric:
        from protege.evals.rouge import RougeMetric
        return RougeMetric(rouge_type, **kw)
    return make


def _exact(**kw: Any) -> Metric:
    from protege.evals.exact import ExactMatch
    return ExactMatch(**kw)


def _label_accuracy(**kw: Any) -> Metric:
    from protege.evals.labels import LabelAccuracy
    return LabelAccuracy(**kw)


def _label_f1(**kw: Any) -> Metric:
    from protege.evals.labels import LabelF1
    return LabelF1(**kw)


def _json_valid(**kw: Any) -> Metric:
    from protege.evals.jsonmetrics import JsonValid
    return JsonValid(**kw)


def _json_schema(**kw: Any) -> Metric:
    from protege.evals.jsonmetrics import JsonSchemaValid
    return JsonSchemaValid(**kw)


def _string_check(**kw: Any) -> Metric:
    from protege.evals.graders import StringCheck
    return StringCheck(**kw)


def _text_similarity(**kw: Any) -> Metric:
    from protege.evals.graders import TextSimilarity
    return TextSimilarity(**kw)


def _judge(**kw: Any) -> Metric:
    from protege.evals.judge import JudgeMetric
    return JudgeMetric(**kw)


_REGISTRY: dict[str, Callable[..., Metric]] = {
    "bleu": _bleu,
    "chrf": _chrf,
    "chrf++": _chrfpp,
    **{f"rouge{i}": _rouge(f"rouge{i}") for i in range(1, 10)},
    "rougeL": _rouge("rougeL"),
    "rougeLsum": _rouge("rougeLsum"),
    "exact_match": _exact,
    "label_accuracy": _label_accuracy,
    "macro_f1": _label_f1,
    "json_valid": _json_valid,
    "json_schema": _json_schema,
    "string_check": _string_check,
    "text_similarity": _text_similarity,
    "judge": _judge,
}


def available_metrics() -> list[str]:
    return list(_REGISTRY)


def get_metric(name: str, **options: Any) -> Metric:
    """A configured metric; a clear ValueError for unknown names or options."""
    try:
        make = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(_REGISTRY)}") from None
    try:
        return make(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for metric {name!r}: {exc}") from None
