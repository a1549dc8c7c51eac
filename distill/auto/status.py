"""Status of automatic distillation as the CLI and API show it: per policy, its eligible traffic,
current cycle and job, last evaluation and live route; and the API shapes of routes and decisions.
"""

from __future__ import annotations

from typing import Any

from protege.store import auto as store_auto
from protege.store import jobs as store_jobs

from protege.distill.auto.agreement import online_agreement
from protege.distill.auto.policies import Policy, PolicyError, stored_policy
from protege.distill.auto.waiting import TOO_FEW, policy_waiting




def policy_status(store: Any, row: store_auto.AutoPolicy) -> dict[str, Any]:
    """Per policy: eligible traffic since the last run, current job, last evaluation, live route."""
    try:
        policy: Policy | None = stored_policy(row)
    except PolicyError:
        policy = None
    last = store_auto.last_cycle(store, row.id)
    out: dict[str, Any] = {"id": row.id, "object": "protege.policy.status", "name": row.name, "enabled": row.enabled}
    if policy is not None:
        out["eligible_since_last_run"] = store_auto.eligible_count(store, policy.match.model, policy.match.metadata, last.until_seq if last else 0)
    # Why the worker is not acting now (None: its next pass has something to do).
    out["waiting"] = policy_waiting(store, row.id, policy, enabled=row.enabled)
    out["cycle"] = None if last is None else {
        "id": last.id, "state": last.state, "dataset_id": last.dataset_id, "job_id": last.job_id, "student_model": last.student_model,
        "created_at": int(last.created_at), "error": last.error,
    }
    job = None
    if last is not None and last.job_id:
        j = store_jobs.get_job(store, last.job_id)
        job = None if j is None else {"id": j.get("id"), "status": j.get("status"), "backend": j.get("backend"), "fine_tuned_model": j.get("fine_tuned_model")}
    out["job"] = job
    evaluated = next((c for c in store_auto.list_cycles(store, row.id, limit=50) if c.evaluation), None)
    if evaluated is not None:
        ev = store_auto.loads(evaluated.evaluation, {})
        gate = ev.get("gate") or {}
        reason = gate.get("reason")
        if not gate and ev.get(TOO_FEW):
            reason = (evaluated.error or "").removeprefix(f"{TOO_FEW}: ")  # rejected before training
        out["last_evaluation"] = {"cycle_id": evaluated.id, "student_model": evaluated.student_model, "passed": bool(gate.get("passed")),
                                  "reason": reason, "n_items": ev.get("n_items"), "metrics": gate.get("metrics")}
    else:
        out["last_evaluation"] = None
    routes = store_auto.active_routes(store, row.id)
    if routes and policy is not None:
        route = routes[0]
        ag = online_agreement(store, route, policy)
        out["route"] = {"id": route.id, "student_model": route.student_model, "stage": route.stage, "percent": route.percent,
                        "compare_percent": route.compare_percent, "since": int(route.stage_started_at),
                        "agreement": ag.rate, "compared": ag.n, "threshold": policy.rollout.agreement_threshold,
                        "served": store_auto.served_counts(store, policy.match.model, policy.match.metadata, route.stage_started_seq)}
    else:
        out["route"] = None
    return out


def _public(d: dict[str, Any], obj: str) -> dict[str, Any]:
    """API shape: id and object first, times as Unix seconds (as in OpenAI's objects)."""
    out = {"id": d.pop("id"), "object": obj}
    for key, value in d.items():
        out[key] = int(value) if key.endswith("_at") and isinstance(value, float) else value
    return out


def route_object(route: store_auto.AutoRoute) -> dict[str, Any]:
    return _public(store_auto.as_dict(route), "protege.route")


def decision_object(d: store_auto.AutoDecision) -> dict[str, Any]:
    return _public(store_auto.as_dict(d), "protege.decision")
