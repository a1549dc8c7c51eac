"""Rollout decisions from online agreement over stored answer pairs (as the proxy captures them):
advance stage by stage, hold below min_compared, roll back below the threshold."""

from __future__ import annotations

import itertools

from protege.distill.auto.worker import Worker
from protege.distill.auto.rollout import open_route
from protege.distill.auto.status import policy_status
from protege.distill.auto.policies import parse_policy, save_policy
from protege.store import Store, insert_records, record_from_completion
from protege.store import auto as store_auto

POLICY = {
    "name": "topic",
    "match": {"model": "teacher-model", "metadata": {"task": "topic"}},
    "trigger": {"min_new_completions": 10_000},
    "rollout": {"stages": ["shadow", "canary", "full"], "canary_percent": 20, "compare_percent": 7,
                "agreement_threshold": 0.8, "min_compared": 10},
}
_ids = itertools.count()


def _resp(text: str, cid: str) -> dict:
    return {"id": cid, "object": "chat.completion", "created": 1, "model": "x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def pairs(store: Store, agree: int, disagree: int, primary_by: str = "teacher") -> None:
    recs = []
    for ok in [True] * agree + [False] * disagree:
        i = next(_ids)
        req = {"model": "teacher-model", "messages": [{"role": "user", "content": f"q{i}"}]}
        recs.append(record_from_completion(_resp("spam", f"p{i}"), req, metadata={"task": "topic"}, source="proxy", served_by=primary_by))
        other = "student" if primary_by == "teacher" else "teacher"
        recs.append(record_from_completion(_resp('{"label": "spam"}' if ok else "ham", f"s{i}"), req, metadata={"task": "topic"},
                                           source="shadow", served_by=other, paired_with=f"p{i}"))
    insert_records(store, recs)


def setup(make_db):
    store = Store(make_db("r"))
    policy = parse_policy(POLICY)
    pid = save_policy(store, policy).id
    route = open_route(store, pid, policy, "protege/topic@v1", "shadow")
    return store, pid, route, Worker(store, None)


def test_advances_through_stages_and_holds_below_min_compared(make_db) -> None:
    store, pid, route, worker = setup(make_db)
    pairs(store, agree=9, disagree=0)
    assert worker.run_once() == []  # 9 < min_compared
    pairs(store, agree=1, disagree=0)
    actions = worker.run_once()
    (r,) = store_auto.active_routes(store)
    assert r.id == route.id and r.stage == "canary" and r.percent == 20 and r.compare_percent == 100, actions
    # the new stage counts only pairs captured after it started
    assert worker.run_once() == []
    pairs(store, agree=9, disagree=1, primary_by="student")  # exactly at the threshold: 0.9 >= 0.8
    worker.run_once()
    (r,) = store_auto.active_routes(store)
    assert r.stage == "full" and r.percent == 100 and r.compare_percent == 7
    pairs(store, agree=20, disagree=0, primary_by="student")
    assert worker.run_once() == []  # full is the last stage
    d = [store_auto.as_dict(x) for x in store_auto.list_decisions(store, pid)[0]]
    assert [x["outcome"] for x in d] == ["advance", "advance"]
    assert d[0]["details"]["agreement"] == 0.9 and d[0]["details"]["compared"] == 10 and d[0]["details"]["to"] == "full"
    st = policy_status(store, store_auto.get_policy(store, pid))
    assert st["route"]["stage"] == "full" and st["route"]["agreement"] == 1.0 and st["route"]["compared"] == 20
    assert st["route"]["served"] == {"student": 20}
    store.close()


def test_rolls_back_below_threshold(make_db) -> None:
    store, pid, route, worker = setup(make_db)
    pairs(store, agree=7, disagree=3)  # 0.7 < 0.8
    actions = worker.run_once()
    assert store_auto.active_routes(store) == []
    assert any("rolled back protege/topic@v1 (agreement 0.700 over 10)" in a for a in actions)
    (d,), _ = store_auto.list_decisions(store, pid)
    assert d.kind == "rollback" and d.route_id == route.id
    details = store_auto.as_dict(d)["details"]
    assert details == {"stage": "shadow", "student_model": "protege/topic@v1", "agreement": 0.7, "compared": 10, "agreed": 7,
                       "threshold": 0.8, "min_compared": 10}
    assert not store_auto.get_route(store, route.id).active
    store.close()


def test_pairs_of_other_traffic_do_not_count(make_db) -> None:
    store, _pid, _route, worker = setup(make_db)
    recs = []
    for i in range(30):
        req = {"model": "teacher-model", "messages": [{"role": "user", "content": f"o{i}"}]}
        recs.append(record_from_completion(_resp("a", f"op{i}"), req, metadata={"task": "other"}, source="proxy"))
        recs.append(record_from_completion(_resp("b", f"os{i}"), req, metadata={"task": "other"}, source="shadow", paired_with=f"op{i}"))
    insert_records(store, recs)
    assert worker.run_once() == []
    assert store_auto.active_routes(store)[0].stage == "shadow"
    store.close()
