"""The promotion gate: a student replaces the teacher only when shown to be as good, with confidence.

For each gate metric, over held-out items the student never trained on, we take the paired
difference (student - teacher) of item scores against the reference and its confidence interval.
The student passes a metric when the interval's lower bound is above ``-tolerance`` (strictly) on at
least ``min_items`` items: "not worse than the teacher by more than the tolerance", stated with 95%
confidence rather than from a point estimate that a lucky split could inflate.

Every metric the evals package provides can gate (``protege.evals.metrics.available_metrics``), by
name (``"rougeL"``), with options (``"bleu:tokenize=char"`` or ``{name = "json_schema", schema = {...}}``),
each with its own paired bootstrap CI from ``protege.evals.stats``. Reference-free metrics
(``json_valid``, ``json_schema``) score the teacher's own answers too. The label gates
(``label_accuracy``, ``accuracy``, ``label``) compare labels after Protege's normaliser
(``{"label": "Spam"}`` is ``spam``): evals' ``label_accuracy`` with ``source = "normalised"``.

The worker scores the held-out outputs once, as an eval run (``protege.evals.results``), and the
gate decides from that run's paired comparisons (:func:`comparison_from_results`): the decision and
``protege eval report`` show the same numbers because they are the same numbers. Only the pairwise
``judge`` is not a metric of that run (it compares the student with the teacher, not with a
reference): it asks a model whether the student's answer beats the teacher's on each held-out prompt
(both orders); its item scores are 1/0.5/0 against the teacher's 0.5 with itself, so the gated
difference is the student's win rate minus 0.5.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from protege.evals.metrics import available_metrics, get_metric, parse_metric
from protege.evals.results import TEACHER
from protege.evals.stats import paired_difference, paired_difference_data


@dataclass
class MetricComparison:
    metric: str
    n: int
    student: float  # mean/corpus score of the student
    teacher: float
    diff: float  # student - teacher
    low: float  # CI of diff
    high: float
    p_value: float | None
    test: str
    confidence: float = 0.95
    signature: str | None = None  # the evals metric's settings and library versions


@dataclass
class GateResult:
    passed: bool
    reason: str
    tolerance: float
    min_items: int
    metrics: list[dict[str, Any]] = field(default_factory=list)  # MetricComparison + passed + why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(comparisons: Sequence[MetricComparison], *, tolerance: float, min_items: int) -> GateResult:
    """Pure decision over computed comparisons (every metric must pass)."""
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    if not comparisons:
        return GateResult(False, "no gate metric was computed", tolerance, min_items, [])
    for c in comparisons:
        row = asdict(c)
        if c.n < min_items:
            ok, why = False, f"{c.metric}: only {c.n} held-out items (need {min_items})"
        elif c.low is None or (isinstance(c.low, float) and math.isnan(c.low)):
            ok, why = False, f"{c.metric}: no confidence interval"
        elif round(c.low, 12) > -tolerance:
            ok, why = True, f"{c.metric}: CI lower bound {c.low:+.4f} > -{tolerance:g}"
        else:
            ok, why = False, f"{c.metric}: CI lower bound {c.low:+.4f} <= -{tolerance:g} (diff {c.diff:+.4f})"
        row["passed"] = ok
        row["why"] = why
        rows.append(row)
        if not ok:
            failures.append(why)
    if failures:
        return GateResult(False, "; ".join(failures), tolerance, min_items, rows)
    return GateResult(True, "all gate metrics within tolerance", tolerance, min_items, rows)


# ---------------------------------------------------------------------------------------------
# Computing comparisons


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, seed: int, confidence: float = 0.95, n_resamples: int = 2000) -> tuple[float, float, float, float]:
    """(diff, low, high, p) of mean(a - b) by seeded percentile bootstrap over items."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    diff = float(d.mean())
    # two-sided p for "no difference": share of resamples on the other side of zero, doubled
    if np.all(d == 0):
        p = 1.0
    else:
        p = float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))
    return diff, float(low), float(high), p


LABEL_ALIASES = ("label_accuracy", "accuracy", "label")
_ALIASES = {"accuracy": "label_accuracy", "label": "label_accuracy"}
JUDGE = "judge"
JUDGE_OPTIONS = ("model", "base_url", "api_key_env", "system_prompt", "temperature", "max_tokens", "concurrency", "timeout", "max_retries")


def parse_metric_spec(spec: Any) -> tuple[str, str, dict[str, Any]]:
    """(label, evals metric name, options) of a gate metric: ``"rougeL"``, ``"bleu:tokenize=char"``
    or ``{"name": "json_schema", "schema": {...}}``. ``label`` is what the gate reports. A label gate
    is evals' ``label_accuracy`` over normalised labels (unless it names its own ``source``)."""
    if isinstance(spec, Mapping):
        opts = dict(spec)
        name = opts.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ValueError("a gate metric table needs a 'name'")
        label = str(opts.pop("label", name))
    elif isinstance(spec, str) and spec.strip():
        name, opts = parse_metric(spec)
        label = spec.strip()
    else:
        raise ValueError(f"a gate metric is a name or a table with a name, not {spec!r}")
    if name in LABEL_ALIASES:
        opts.setdefault("source", "normalised")
    return label, _ALIASES.get(name, name), opts


def eval_run_metric(spec: Any) -> Any | None:
    """A gate metric as the held-out eval run names it (None for the judge, which is no metric of a
    run): as written, less the gate's own ``label``; a label gate with its normalised source."""
    _label, name, opts = parse_metric_spec(spec)
    if name == JUDGE:
        return None
    if isinstance(spec, str) and spec.partition(":")[0].strip() not in LABEL_ALIASES:
        return spec
    return {"name": name, **opts}


def build_metric(spec: Any, *, resolve_secrets: bool = True) -> tuple[str, Any]:
    """(label, configured ``protege.evals`` Metric); a one-line ValueError for unknown names/options.

    The judge's key is named by ``api_key_env`` (never written in a policy); it is read from the
    environment only when the gate runs (``resolve_secrets``), not when a policy is validated."""
    label, name, opts = parse_metric_spec(spec)
    if name not in available_metrics():
        raise ValueError(f"unknown gate metric {name!r}; available: {', '.join(available_metrics() + list(_ALIASES))}")
    if name == "judge":
        unknown = set(opts) - set(JUDGE_OPTIONS)
        if unknown:
            raise ValueError(f"judge: unknown option {min(unknown)!r} (known: {', '.join(JUDGE_OPTIONS)})")
        if not opts.get("model"):
            raise ValueError("judge needs a model (the judging model's name)")
        env = opts.pop("api_key_env", None)
        if env is not None and not (isinstance(env, str) and env.replace("_", "").isalnum()):
            raise ValueError("judge: api_key_env must name an environment variable")
        if resolve_secrets:
            if env and not os.environ.get(env):
                raise ValueError(f"judge: the environment variable {env} (api_key_env) is not set")
            opts["api_key"] = os.environ.get(env or "OPENAI_API_KEY")
    return label, get_metric(name, **opts)


def compare_metric(
    metric: Any,
    student: Sequence[str],
    teacher: Sequence[str],
    references: Sequence[str],
    *,
    seed: int = 0,
    confidence: float = 0.95,
    inputs: Sequence[str] | None = None,
) -> MetricComparison:
    """Student vs teacher on one metric (a gate metric spec), with the paired CI of the difference.

    Uses ``protege.evals`` (metrics + paired statistics)."""
    n = len(references)
    label, m = build_metric(metric)
    name = m.name
    if name == JUDGE:
        # The student against the teacher, on the prompt; the teacher against itself is a tie (0.5).
        scores = m.item_scores(list(student), list(teacher), inputs=list(inputs) if inputs is not None else None)
        res = paired_difference_data(m, [0.5] * len(scores), scores, seed=seed, confidence=confidence)
    else:
        # evals.stats: diff = b - a, so the teacher is the baseline (a) and the student the candidate (b)
        res = paired_difference(m, list(teacher), list(student), list(references), seed=seed, confidence=confidence)
    return MetricComparison(label, n, float(res.score_b), float(res.score_a), float(res.diff), float(res.low), float(res.high),
                            None if res.p_value is None else float(res.p_value), str(res.test), confidence, m.signature())


def run_gate(
    gate: Any,
    student: Sequence[str],
    teacher: Sequence[str],
    references: Sequence[str],
    inputs: Sequence[str] | None = None,
) -> GateResult:
    """Compute every metric of ``gate`` (a policies.GateSpec) and decide. ``inputs``: the prompts'
    text, which the judge shows its model beside the two answers."""
    comparisons = [
        compare_metric(metric, student, teacher, references, seed=gate.seed, confidence=gate.confidence, inputs=inputs)
        for metric in gate.metrics
    ]
    return decide(comparisons, tolerance=gate.tolerance, min_items=gate.min_items)


def comparison_from_results(spec: Any, results: Mapping[str, Any], *, candidate: str, confidence: float) -> MetricComparison:
    """A gate metric's comparison as a scored eval run holds it (``protege.evals.results.compute_results``,
    the run's spec carrying the gate's seed and ``confidence``): ``candidate`` against the teacher's
    answers on that metric, with the run's paired CI. Nothing is scored here."""
    label, metric = build_metric(spec, resolve_secrets=False)  # its name and settings, as the run loaded it
    name = metric.name
    paired = results["paired"][name][candidate]
    scores = results["scores"][name]
    signature = next(m["signature"] for m in results["metrics"] if m["name"] == name)
    p_value = paired["p_value"]
    return MetricComparison(label, int(paired["n"]), float(scores[candidate]["score"]), float(scores[TEACHER]["score"]),
                            float(paired["diff"]), float(paired["low"]), float(paired["high"]),
                            None if p_value is None else float(p_value), str(paired["test"]), confidence, signature)
