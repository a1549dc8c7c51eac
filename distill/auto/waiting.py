"""Why the automatic loop is not acting on a policy now, in numbers and in words.

A loop that stays silent looks broken: "480 of 500 new eligible completions", "min_interval: next at
2026-12-01T10:00:00Z" or "ftjob_... running" tells the operator it is waiting, on what, and until
when. The same reading serves the trigger (:func:`trigger_state`, which the worker acts on), the
worker's log, ``protege worker --once``, ``protege auto status`` and the status API, so they never
disagree.

A cycle the gate could not judge for lack of held-out items (``too_few_items`` on the cycle) is no
verdict on the student: it does not start ``min_interval`` again, and the next cycle starts as soon
as enough new eligible completions have come in to reach ``min_items`` (the shortfall it recorded),
instead of a whole new ``min_new_completions``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from protege.store import auto as store_auto
from protege.store import jobs as store_jobs

from protege.distill.auto.policies import Policy

DEFAULT_VALIDATION_FRACTION = 0.2  # the loop's held-out share unless a policy's dataset sets one
TOO_FEW = "too_few_items"  # the prefix of a cycle's error when its dataset held too few items to judge


def iso(t: float) -> str:
    """``2026-12-01T10:00:00Z``: a time an operator reads (UTC)."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TriggerState:
    """Whether a policy starts a cycle now; when not, ``kind`` and ``message`` say why."""

    due: bool
    new_eligible: int
    since_seq: int
    elapsed_s: float
    kind: str | None = None  # below_trigger | too_few_items | min_interval | schedule | no_traffic
    message: str | None = None
    needed: int | None = None  # eligible completions the trigger waits for
    next_at: float | None = None  # when min_interval / the schedule allows the next cycle

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["elapsed_s"] = None if math.isinf(self.elapsed_s) else round(self.elapsed_s, 3)
        d["next_at"] = None if self.next_at is None else int(math.ceil(self.next_at))
        return d


def too_few(cycle: store_auto.AutoCycle | None) -> dict[str, Any] | None:
    """The shortfall a cycle recorded when its held-out split was below ``min_items``, else None."""
    if cycle is None or not (cycle.error or "").startswith(TOO_FEW):
        return None
    return (store_auto.loads(cycle.evaluation, {}) or {}).get(TOO_FEW) or {}


def _interval_base(store: Any, policy_id: str) -> store_auto.AutoCycle | None:
    """The last cycle that counts for ``min_interval`` and ``every``: not one rejected for too few items."""
    return next((c for c in store_auto.list_cycles(store, policy_id, limit=100) if too_few(c) is None), None)


def trigger_state(store: Any, policy_id: str, policy: Policy, now: float | None = None) -> TriggerState:
    """Whether the policy should start a cycle now, and the numbers (and words) behind it."""
    now = time.time() if now is None else now
    last = store_auto.last_cycle(store, policy_id)
    after_seq = last.until_seq if last else 0
    new = store_auto.eligible_count(store, policy.match.model, policy.match.metadata, after_seq)
    base = _interval_base(store, policy_id)
    elapsed = (now - base.created_at) if base else float("inf")
    t = policy.trigger
    short = too_few(last)
    state = TriggerState(False, new, after_seq, elapsed)
    if short is not None:
        # Retry as soon as the data can reach min_items; the trigger already fired for this traffic.
        needed = max(1, int(short.get("short_by") or 1))
        if new < needed:
            state.kind, state.needed = TOO_FEW, needed
            state.message = (f"waiting for data: {new} of {needed} more eligible completions "
                             f"(the last dataset had {short.get('held_out')} held-out items; the gate needs {short.get('min_items')})")
            return state
        state.due = True
        return state
    by_count = t.min_new_completions is not None and new >= t.min_new_completions
    by_schedule = t.every is not None and elapsed >= t.every and new >= 1
    interval_ok = t.min_interval is None or elapsed >= t.min_interval
    if (by_count or by_schedule) and interval_ok:
        state.due = True
        return state
    if by_count or by_schedule:
        state.kind, state.next_at = "min_interval", base.created_at + t.min_interval  # type: ignore[union-attr,operator]
        state.message = f"waiting for min_interval: {new} new eligible completions, next cycle at {iso(state.next_at)}"
        return state
    if t.min_new_completions is not None:
        state.kind, state.needed = "below_trigger", t.min_new_completions
        state.message = f"waiting for traffic: {new} of {t.min_new_completions} new eligible completions"
        if t.every is not None and new >= 1 and base is not None:
            state.next_at = base.created_at + t.every
            state.message += f" (or the schedule, at {iso(state.next_at)})"
        return state
    if new < 1:
        state.kind = "no_traffic"
        state.message = "waiting for traffic: no new eligible completions since the last cycle"
        return state
    state.kind, state.next_at = "schedule", base.created_at + t.every  # type: ignore[union-attr,operator]
    state.message = f"waiting for the schedule: {new} new eligible completions, next cycle at {iso(state.next_at)}"
    return state


def job_waiting(store: Any, cycle: store_auto.AutoCycle) -> str:
    """What an open cycle waits on: its fine-tune (with its step, where the job records steps)."""
    job = store_jobs.get_job(store, cycle.job_id) if cycle.job_id else None
    if job is None:
        return f"cycle {cycle.id} {cycle.state}"
    result = job.get("result") or {}
    steps = f", step {result.get('step', 0)}/{result['total_steps']}" if result.get("total_steps") else ""
    return f"{job['id']} {job.get('status')}{steps} (cycle {cycle.id})"


def policy_waiting(store: Any, policy_id: str, policy: Policy | None, enabled: bool = True,
                   now: float | None = None) -> dict[str, Any] | None:
    """Why the worker is not acting on this policy now (``{"kind", "message", ...}``), or None when the
    next pass has something to do."""
    if not enabled:
        return {"kind": "disabled", "message": "disabled (protege auto enable to resume)"}
    if policy is None:
        return {"kind": "invalid", "message": "the stored policy does not validate"}
    cycle = store_auto.open_cycle(store, policy_id)
    if cycle is not None:
        if cycle.state == "training" and cycle.job_id:
            job = store_jobs.get_job(store, cycle.job_id)
            if job is not None and job.get("status") not in store_jobs.TERMINAL_STATUSES:
                return {"kind": "job_running", "job_id": job["id"], "message": f"waiting for fine-tune {job_waiting(store, cycle)}"}
        return None
    state = trigger_state(store, policy_id, policy, now)
    return None if state.due else {**state.to_dict(), "kind": state.kind, "message": state.message}




def reachability_warnings(policy: Policy) -> list[str]:
    """What ``protege auto validate`` warns about: a gate ``min_items`` that the trigger lets a cycle
    start without (min_items 50 at validation_fraction 0.1 needs 500 examples). Such a cycle is
    rejected before training, so nothing breaks; but the operator should know why nothing happens."""
    share = float(policy.dataset.get("validation_fraction", DEFAULT_VALIDATION_FRACTION))
    if share <= 0:
        return []  # an error the policy parser reports
    need = math.ceil(round(policy.gate.min_items / share, 9))
    t = policy.trigger
    where = (f"{policy.name}: gate.min_items {policy.gate.min_items} with dataset.validation_fraction {share:g} "
             f"needs at least {need} examples in a cycle's dataset")
    if t.min_new_completions is not None and t.min_new_completions < need:
        return [f"{where}; trigger.min_new_completions {t.min_new_completions} can start a cycle with fewer "
                f"(it is rejected before training, and retried once there are {need})"]
    if t.min_new_completions is None:
        return [f"{where}; trigger.every starts a cycle on any new traffic "
                f"(one with fewer is rejected before training, and retried once there are {need})"]
    return []


__all__ = ["TOO_FEW", "TriggerState", "iso", "job_waiting", "policy_waiting", "reachability_warnings", "too_few", "trigger_state"]
