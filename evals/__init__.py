"""protege.evals: is the student as good as the teacher? Metrics, statistics, eval runs and their reports.

The room, in the order one eval run flows through it (imports go down this list, never up):

* ``api.py``, ``cli.py`` -- the interfaces: ``/protege/v1/evals`` (mounted by ``protege.app``) and
  ``protege eval run|list|show|report`` (mounted by ``protege.cli``).
* ``report/`` -- a run's report: ``data.py`` builds it (headline, costs, usage, items), ``markdown.py``,
  ``html.py`` (with ``svg.py`` charts) and ``json.py`` render it, ``text.py`` formats numbers.
* ``runs.py`` -- a run from its spec: freeze the items into the store, ask every candidate
  (``generate.py``, through the ``openai`` SDK) for every item, resumably, then score. ``breaker.py``
  stops a run whose candidate cannot answer at all; ``served.py`` sends a ``protege/<name>``
  candidate without a base URL to the ``protege serve`` holding the store.
* ``results.py`` -- a run's scores and statistics, computed once and cached on the run; each system
  is scored over the items it answered, its failed calls counted apart (never scored 0).
* ``scoring.py`` -- the fast batch scorer: many metrics over many pairs, identical pairs once, shared
  tokenisation, forked workers; it asks each metric what it needs and knows none by name.
* ``metrics/`` -- ``__init__`` loads metrics by name (``get_metric``, ``load_metrics``), ``base.py``
  is the interface every metric implements and its typed ``MetricResult``; one module per metric
  family (bleu, chrf, rouge, exact, labels, jsonmetrics, graders, judge). A new metric is a new
  module there with a ``METRICS`` table.
* ``stats.py`` -- bootstrap confidence intervals, paired differences, McNemar, Cohen's kappa.
* ``pricing.py`` -- the editable price table behind a report's cost ratios.

Everything persists through ``protege.store`` (``protege.store.evals``).

Public surface (imported lazily, so that ``import protege.evals.<module>`` does not pay for
sacrebleu / rouge-score / scikit-learn until a metric is used):

* metrics: ``Metric``, ``MetricResult``, ``get_metric(name, **options)``, ``available_metrics()``,
  ``load_metrics``, ``parse_metric``, ``MetricSpecError``, ``BleuMetric``, ``ChrfMetric``, ``RougeMetric``,
  ``UnicodeTokenizer``, ``split_sentences``, ``ExactMatch``, ``LabelExtractor``, ``LabelAccuracy``,
  ``LabelF1``, ``LabelReport``, ``label_report``, ``JsonValid``, ``JsonSchemaValid``, ``StringCheck``,
  ``TextSimilarity``, ``grader_from_config``
* judge: ``PairwiseJudge``, ``JudgeMetric``, ``JudgeResult``, ``JudgeItem``
* statistics: ``CI``, ``PairedResult``, ``McNemarResult``, ``KappaResult``, ``bootstrap_ci``,
  ``bootstrap_ci_data``, ``paired_difference``, ``paired_difference_data``, ``mcnemar``, ``cohen_kappa``
* batch scoring: ``score_pairs``, ``DEFAULT_METRICS``
* runs: ``Candidate``, ``CandidateError``, ``RetryPolicy``, ``RunSpec``, ``RunSpecError``, ``create_run``,
  ``execute_run``, ``run_object``, ``run_sync``; prices: ``DEFAULT_PRICES``, ``PriceTableError``,
  ``load_prices``, ``price_for``
* results and reports: ``compute_results``, ``report_data``, ``render_report``
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Metric": "metrics.base", "MetricResult": "metrics.base",
    "get_metric": "metrics", "available_metrics": "metrics", "load_metrics": "metrics", "parse_metric": "metrics",
    "MetricSpecError": "metrics",
    "BleuMetric": "metrics.bleu", "ChrfMetric": "metrics.chrf",
    "RougeMetric": "metrics.rouge", "RougeFamily": "metrics.rouge", "UnicodeTokenizer": "metrics.rouge",
    "split_sentences": "metrics.rouge",
    "ExactMatch": "metrics.exact",
    "LabelExtractor": "metrics.labels", "LabelAccuracy": "metrics.labels", "LabelF1": "metrics.labels",
    "LabelReport": "metrics.labels", "label_report": "metrics.labels", "MISSING": "metrics.labels",
    "JsonValid": "metrics.jsonmetrics", "JsonSchemaValid": "metrics.jsonmetrics", "parse_json": "metrics.jsonmetrics",
    "StringCheck": "metrics.graders", "TextSimilarity": "metrics.graders", "grader_from_config": "metrics.graders",
    "PairwiseJudge": "metrics.judge", "JudgeMetric": "metrics.judge", "JudgeResult": "metrics.judge",
    "JudgeItem": "metrics.judge",
    "CI": "stats", "PairedResult": "stats", "McNemarResult": "stats", "KappaResult": "stats",
    "bootstrap_ci": "stats", "bootstrap_ci_data": "stats", "paired_difference": "stats",
    "paired_difference_data": "stats", "mcnemar": "stats", "cohen_kappa": "stats",
    "score_pairs": "scoring", "DEFAULT_METRICS": "scoring",
    "Candidate": "generate", "CandidateError": "generate", "RetryPolicy": "generate",
    "DEFAULT_PRICES": "pricing", "PriceTableError": "pricing", "load_prices": "pricing", "price_for": "pricing",
    "RunSpec": "runs", "RunSpecError": "runs", "create_run": "runs", "execute_run": "runs", "run_object": "runs",
    "run_sync": "runs",
    "compute_results": "results",
    "render_report": "report", "report_data": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'protege.evals' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"protege.evals.{module}"), name)
    globals()[name] = value
    return value
