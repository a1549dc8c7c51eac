"""protege.evals: metrics, statistics and fast batch scoring for teacher-vs-student evals.

Public surface (imported lazily, so that ``import protege.evals.<module>`` does not pay for
sacrebleu / rouge-score / scikit-learn until a metric is used):

* metrics: ``Metric``, ``get_metric(name, **options)``, ``available_metrics()``, ``BleuMetric``,
  ``ChrfMetric``, ``RougeMetric``, ``UnicodeTokenizer``, ``split_sentences``, ``ExactMatch``,
  ``LabelExtractor``, ``LabelAccuracy``, ``LabelF1``, ``LabelReport``, ``label_report``, ``JsonValid``,
  ``JsonSchemaValid``, ``StringCheck``, ``TextSimilarity``, ``grader_from_config``
* judge: ``PairwiseJudge``, ``JudgeMetric``, ``JudgeResult``, ``JudgeItem``
* statistics: ``CI``, ``PairedResult``, ``McNemarResult``, ``KappaResult``, ``bootstrap_ci``,
  ``bootstrap_ci_data``, ``paired_difference``, ``paired_difference_data``, ``mcnemar``, ``cohen_kappa``
* batch scoring: ``score_pairs``, ``MetricResult``, ``DEFAULT_METRICS``
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Metric": "base",
    "get_metric": "metrics", "available_metrics": "metrics",
    "BleuMetric": "bleu", "ChrfMetric": "chrf",
    "RougeMetric": "rouge", "RougeFamily": "rouge", "UnicodeTokenizer": "rouge", "split_sentences": "rouge",
    "ExactMatch": "exact",
    "LabelExtractor": "labels", "LabelAccuracy": "labels", "LabelF1": "labels", "LabelReport": "labels",
    "label_report": "labels", "MISSING": "labels",
    "JsonValid": "jsonmetrics", "JsonSchemaValid": "jsonmetrics", "parse_json": "jsonmetrics",
    "StringCheck": "graders", "TextSimilarity": "graders", "grader_from_config": "graders",
    "PairwiseJudge": "judge", "JudgeMetric": "judge", "JudgeResult": "judge", "JudgeItem": "judge",
    "CI": "stats", "PairedResult": "stats", "McNemarResult": "stats", "KappaResult": "stats",
    "bootstrap_ci": "stats", "bootstrap_ci_data": "stats", "paired_difference": "stats",
    "paired_difference_data": "stats", "mcnemar": "stats", "cohen_kappa": "stats",
    "score_pairs": "scoring", "MetricResult": "scoring", "DEFAULT_METRICS": "scoring",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'protege.evals' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"protege.evals.{module}"), name)
    globals()[name] = value
    return value

# Eval runs, reports and their interfaces (same lazy import; cli.py and api.py are mounted by protege).
_EXPORTS.update({
    "Candidate": "generate", "CandidateError": "generate", "RetryPolicy": "generate",
    "DEFAULT_PRICES": "pricing", "PriceTableError": "pricing", "load_prices": "pricing", "price_for": "pricing",
    "RunSpec": "runs", "RunSpecError": "runs", "create_run": "runs", "execute_run": "runs", "run_object": "runs",
    "run_sync": "runs",
    "compute_results": "summary", "render_report": "summary", "report_data": "summary",
})
__all__ = sorted(_EXPORTS)
