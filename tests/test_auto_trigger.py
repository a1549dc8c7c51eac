"""When a cycle starts: N new eligible completions since the last run, a schedule, a minimum interval."""

from __future__ import annotations

import time

from protege.distill.auto.worker import due
from protege.distill.auto.policies import parse_policy
from protege.store import Store, insert_records, record_from_completion
from protege.store import auto as store_auto


def _add(store: Store, n: int, **extra) -> None:
    recs = []
    for i in range(n):
        req = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
        resp = {"id": f"c{time.monotonic_ns()}-{i}", "model": "m", "created": 1,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"}]}
        recs.append(record_from_completion(resp, req, metadata={"task": "t"}, **{"source": "proxy", **extra}))
    insert_records(store, recs)


def _policy(trigger: dict):
    return parse_policy({"name": "p", "match": {"model": "m", "metadata": {"task": "t"}}, "trigger": trigger})


def test_count_trigger_counts_only_new_teacher_answers(make_db) -> None:
    store = Store(make_db("t"))
    p = _policy({"min_new_completions": 5})
    pid = store_auto.put_policy(store, "p", p.to_dict()).id
    _add(store, 4)
    _add(store, 3, served_by="student")  # canary answers are not training data
    _add(store, 3, source="shadow")
    ok, numbers = due(store, pid, p)
    assert not ok and numbers["new_eligible"] == 4
    _add(store, 1, served_by="teacher")
    assert due(store, pid, p)[0]
    store_auto.create_cycle(store, pid, until_seq=store_auto.max_seq(store))
    ok, numbers = due(store, pid, p)
    assert not ok and numbers["new_eligible"] == 0
    store.close()


def test_schedule_and_min_interval(make_db) -> None:
    store = Store(make_db("t"))
    every = _policy({"every": "1h"})
    pid = store_auto.put_policy(store, "p", every.to_dict()).id
    assert not due(store, pid, every)[0]  # nothing to learn from yet
    _add(store, 1)
    assert due(store, pid, every)[0]  # never ran: due
    cyc = store_auto.create_cycle(store, pid, until_seq=0)
    now = cyc.created_at
    assert not due(store, pid, every, now=now + 3599)[0]
    assert due(store, pid, every, now=now + 3600)[0]
    gated = _policy({"min_new_completions": 1, "min_interval": "10m"})
    assert not due(store, pid, gated, now=now + 599)[0]
    assert due(store, pid, gated, now=now + 600)[0]
    store.close()
