"""The held-out evaluation of a trained student: scored once, as an eval run, and gated on that run.

The worker has the student answer every held-out prompt; this module records the prompts, the
teacher's answers (the references) and the student's answers as an eval run, scores it with the
gate's metrics, seed and confidence (``protege.evals.results.compute_results``: one batch pass per
system, paired bootstraps against the teacher) and lets the gate decide from that run's comparisons.
So ``protege eval report RUN`` shows the numbers the decision was made on, and nothing scores the
held-out outputs a second time. The pairwise judge, which is no metric of an eval run, is asked by
the gate itself (:func:`protege.distill.auto.gate.compare_metric`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from protege.evals.results import compute_results
from protege.evals.stats import DEFAULT_RESAMPLES
from protege.store import auto as store_auto
from protege.store import evals as store_evals

from protege.distill.auto.gate import GateResult, compare_metric, comparison_from_results, decide, eval_run_metric
from protege.distill.auto.policies import Policy

CANDIDATE = "student"  # the student's system name in the eval run


def record_heldout_run(store: Any, policy: Policy, cycle: store_auto.AutoCycle, prompts: Sequence[list[dict[str, Any]]],
                       refs: Sequence[str], student_out: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(run id, results) of the held-out split as a scored eval run; a run whose scoring fails is
    marked failed and the error raised (the cycle cannot be decided without it)."""
    gate = policy.gate
    spec = {
        "candidates": [{"name": CANDIDATE, "model": cycle.student_model, "base_url": None, "api_key_env": None}],
        "metrics": [m for m in (eval_run_metric(x) for x in gate.metrics) if m is not None], "reference": "auto",
        "seed": gate.seed, "n_resamples": DEFAULT_RESAMPLES, "confidence": gate.confidence,
        "source": f"protege auto: policy {policy.name}, cycle {cycle.id}, dataset {cycle.dataset_id} (held-out split)",
    }
    items = [{"source_id": f"{cycle.dataset_id}/validation/{i}", "messages": m, "reference": r, "reference_kind": "teacher",
              "teacher_output": r, "metadata": dict(policy.match.metadata)} for i, (m, r) in enumerate(zip(prompts, refs))]
    run = store_evals.create_run(store, spec, items, name=f"auto-{policy.name}-{cycle.id}")
    stored = store_evals.list_items(store, run["id"])
    store_evals.save_outputs(store, run["id"], [
        {"item_id": it["id"], "candidate": CANDIDATE, "status": "ok", "output": out, "model": cycle.student_model}
        for it, out in zip(stored, student_out)
    ])
    started = int(time.time())
    try:
        results = compute_results(store, run["id"])
    except Exception as exc:
        store_evals.update_run(store, run["id"], status="failed", started_at=started, completed_at=int(time.time()),
                               error={"code": "scoring_failed", "message": f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    store_evals.update_run(store, run["id"], status="completed", started_at=started, completed_at=int(time.time()), results=results)
    return run["id"], results


def evaluate_heldout(store: Any, policy: Policy, cycle: store_auto.AutoCycle, prompts: Sequence[list[dict[str, Any]]],
                     refs: Sequence[str], student_out: Sequence[str], inputs: Sequence[str]) -> tuple[GateResult, str]:
    """(the gate's decision, the eval run it was decided on). The reference is the teacher's answer
    (or a human correction of it, which the dataset puts in its place), and so is the teacher's own
    output; ``inputs``: the prompts' text, which the judge shows its model."""
    gate = policy.gate
    run_id, results = record_heldout_run(store, policy, cycle, prompts, refs, student_out)
    comparisons = [
        comparison_from_results(metric, results, candidate=CANDIDATE, confidence=gate.confidence)
        if eval_run_metric(metric) is not None else
        compare_metric(metric, student_out, refs, refs, seed=gate.seed, confidence=gate.confidence, inputs=inputs)
        for metric in gate.metrics
    ]
    return decide(comparisons, tolerance=gate.tolerance, min_items=gate.min_items), run_id
