"""The promotion gate: CI lower bound of (student - teacher) strictly above -tolerance, min items."""

from __future__ import annotations

import pytest
from protege.distill.auto.gate import (
    MetricComparison,
    compare_metric,
    decide,
    paired_bootstrap,
    run_gate,
)
from protege.distill.auto.policies import GateSpec


def _c(low: float, n: int = 100, metric: str = "exact_match") -> MetricComparison:
    return MetricComparison(metric, n, 0.9, 0.92, -0.02, low, 0.01, 0.3, "test")


def test_lower_bound_exactly_at_minus_tolerance_fails() -> None:
    r = decide([_c(-0.05)], tolerance=0.05, min_items=30)
    assert not r.passed and "<= -0.05" in r.reason


def test_lower_bound_just_above_passes() -> None:
    r = decide([_c(-0.0499)], tolerance=0.05, min_items=30)
    assert r.passed
    assert r.metrics[0]["passed"] is True and r.metrics[0]["low"] == -0.0499


def test_too_few_items_fails_even_when_better() -> None:
    r = decide([_c(0.1, n=29)], tolerance=0.05, min_items=30)
    assert not r.passed and "only 29 held-out items (need 30)" in r.reason
    assert decide([_c(0.1, n=30)], tolerance=0.05, min_items=30).passed


def test_every_metric_must_pass() -> None:
    r = decide([_c(0.0), _c(-0.2, metric="rougeL")], tolerance=0.05, min_items=30)
    assert not r.passed and "rougeL" in r.reason and "exact_match" not in r.reason
    assert [m["passed"] for m in r.metrics] == [True, False]


def test_no_metrics_fails() -> None:
    assert not decide([], tolerance=0.1, min_items=1).passed


def test_zero_tolerance_needs_a_strictly_positive_lower_bound() -> None:
    assert not decide([_c(0.0)], tolerance=0.0, min_items=1).passed
    assert decide([_c(0.001)], tolerance=0.0, min_items=1).passed


def test_paired_bootstrap_is_seeded_and_brackets_the_difference() -> None:
    a = [1.0] * 80 + [0.0] * 20
    b = [1.0] * 100
    d1 = paired_bootstrap(a, b, seed=7)
    d2 = paired_bootstrap(a, b, seed=7)
    assert d1 == d2
    diff, low, high, p = d1
    assert diff == pytest.approx(-0.2)
    assert low < diff < high <= 0.0 and p < 0.05
    assert paired_bootstrap([1.0] * 10, [1.0] * 10, seed=0) == (0.0, 0.0, 0.0, 1.0)


def test_run_gate_on_outputs() -> None:
    refs = ["spam", "ham"] * 50
    good = list(refs)
    bad = ["spam"] * 100  # half wrong
    spec = GateSpec(metrics=["exact_match"], tolerance=0.05, min_items=50)
    ok = run_gate(spec, good, refs, refs)
    assert ok.passed and ok.metrics[0]["n"] == 100 and ok.metrics[0]["diff"] == 0.0
    no = run_gate(spec, bad, refs, refs)
    assert not no.passed and no.metrics[0]["student"] == pytest.approx(0.5)


def test_label_metric_normalises_formats() -> None:
    c = compare_metric("label_accuracy", ['{"label": "Spam"}', "Category: ham."], ["spam", "ham"], ["spam", "ham"], seed=0)
    assert c.student == 1.0 and c.diff == 0.0
