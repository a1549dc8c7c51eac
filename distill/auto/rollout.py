"""Rollout of a trained student: the stages (shadow -> canary -> full), opening a route at a stage,
and the manual promote/rollback actions behind ``protege auto promote|rollback`` and the API.

The worker (:mod:`protege.distill.auto.worker`) uses the same stage parameters to advance or back out
a route automatically, so a manual and an automatic step change a route the same way.
"""

from __future__ import annotations

from typing import Any

from protege.store import auto as store_auto

from protege.distill.auto.policies import Policy, stored_policy

STAGE_ORDER = ("shadow", "canary", "full")


class AutoError(RuntimeError):
    """A user-facing failure of a manual action (promote/rollback)."""




def stage_params(policy: Policy, stage: str) -> dict[str, float]:
    r = policy.rollout
    if stage == "shadow":
        return {"percent": 0.0, "compare_percent": 0.0}
    if stage == "canary":
        # every student answer in the (small) canary is checked against the teacher in the background
        return {"percent": r.canary_percent, "compare_percent": 100.0}
    return {"percent": 100.0, "compare_percent": r.compare_percent}


def open_route(store: Any, policy_id: str, policy: Policy, student_model: str, stage: str, cycle_id: str | None = None) -> store_auto.AutoRoute:
    return store_auto.create_route(
        store, policy_id, student_model, stage, match_model=policy.match.model, match_metadata=dict(policy.match.metadata),
        timeout=policy.rollout.student_timeout, cycle_id=cycle_id, start_seq=store_auto.max_seq(store), **stage_params(policy, stage),
    )


def next_stage(policy: Policy, stage: str) -> str | None:
    stages = list(policy.rollout.stages)
    later = [s for s in stages if STAGE_ORDER.index(s) > STAGE_ORDER.index(stage)]
    return later[0] if later else None


def promote(store: Any, policy_ref: str, stage: str | None = None, force: bool = False) -> store_auto.AutoRoute:
    """Manual promote: move the live route to ``stage`` (default: its next stage), or start one for
    the policy's latest trained student. A student its gate rejected goes live only with ``force``
    (the same rule as ``students promote``): a bare promote never serves what failed its gate."""
    row = store_auto.get_policy(store, policy_ref)
    if row is None:
        raise AutoError(f"no policy {policy_ref!r}")
    policy = stored_policy(row)
    if stage is not None and stage not in STAGE_ORDER:
        raise AutoError(f"stage must be shadow, canary or full, not {stage!r}")
    routes = store_auto.active_routes(store, row.id)
    if routes:
        route = routes[0]
        target = stage or next_stage(policy, route.stage)
        if target is None:
            raise AutoError(f"policy {row.name!r} is already at stage {route.stage!r}")
        p = stage_params(policy, target)
        updated = store_auto.set_route_stage(store, route.id, target, p["percent"], store_auto.max_seq(store), p["compare_percent"])
        store_auto.record_decision(store, row.id, "promote", "advance", f"manual promote {route.stage} -> {target}",
                                   {"from": route.stage, "to": target, "manual": True}, cycle_id=route.cycle_id, route_id=route.id)
        return updated
    students = [c for c in store_auto.list_cycles(store, row.id, limit=50) if c.student_model]
    if not students:
        raise AutoError(f"policy {row.name!r} has no trained student to promote")
    if students[0].state == "rejected" and not force:
        raise AutoError(
            f"{students[0].student_model} was rejected by its gate (cycle {students[0].id}); "
            "promote it anyway with --force (API: \"force\": true)"
        )
    target = stage or policy.rollout.stages[0]
    route = open_route(store, row.id, policy, students[0].student_model, target, students[0].id)  # type: ignore[arg-type]
    store_auto.record_decision(store, row.id, "promote", "promote", f"manual promote of {students[0].student_model} to {target}",
                               {"to": target, "student_model": students[0].student_model, "cycle_id": students[0].id, "manual": True,
                                "forced": students[0].state == "rejected"},
                               cycle_id=students[0].id, route_id=route.id)
    return route


def rollback(store: Any, policy_ref: str, reason: str = "manual rollback") -> store_auto.AutoRoute:
    row = store_auto.get_policy(store, policy_ref)
    if row is None:
        raise AutoError(f"no policy {policy_ref!r}")
    routes = store_auto.active_routes(store, row.id)
    if not routes:
        raise AutoError(f"policy {row.name!r} has no live route")
    ended = store_auto.end_route(store, routes[0].id)
    store_auto.record_decision(store, row.id, "manual_rollback", "rollback", reason,
                               {"stage": routes[0].stage, "student_model": routes[0].student_model, "manual": True}, route_id=routes[0].id)
    return ended  # type: ignore[return-value]
