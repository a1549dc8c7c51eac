"""Former home of run scoring and report data, kept as an alias while other rooms move over.

``protege.distill`` (restructured in parallel) imports ``compute_results`` from here. New code
imports ``protege.evals.results`` (scores and statistics of a run), ``protege.evals.report``
(report data and rendering) and ``protege.evals.metrics`` (metric loading), or the names from
``protege.evals``. Delete this module once nothing imports it.
"""

from __future__ import annotations

from .metrics import load_metrics, parse_metric
from .report import FORMATS, render_report, report_data, versions
from .results import TEACHER, compute_results

__all__ = ["FORMATS", "TEACHER", "compute_results", "load_metrics", "parse_metric", "render_report", "report_data", "versions"]
