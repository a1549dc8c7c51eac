"""Online agreement: comparators, and pairs read from real captures in the store."""

from __future__ import annotations

from protege.distill.auto.agreement import (
    agreement,
    get_comparator,
    label_equal,
    normalise_label,
    online_agreement,
    response_text,
)
from protege.distill.auto.policies import parse_policy
from protege.store import Store, insert_records, record_from_completion
from protege.store import auto as store_auto


def _resp(text: str, cid: str) -> dict:
    return {"id": cid, "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def test_label_normalisation() -> None:
    for text in ('{"label": "Spam"}', "Category: spam.", "  SPAM ", '"spam"', "label=spam", '{"x": "spam"}', '["spam"]'):
        assert normalise_label(text) == "spam", text
    assert not label_equal("spam", "ham")


def test_comparators() -> None:
    assert get_comparator("exact")("a  b", "a b")
    assert not get_comparator("exact")("A", "a")
    assert get_comparator("label")("A", "a.")
    sim = get_comparator("similarity", 0.8)
    assert sim("the cat sat on the mat", "the cat sat on a mat")
    assert not sim("the cat sat on the mat", "completely different")
    r = agreement([("a", "a"), ("a", "b"), ("c", "c"), ("d", "d")], get_comparator("exact"))
    assert (r.n, r.agreed, r.rate) == (4, 3, 0.75)
    assert agreement([], label_equal).rate is None


def test_response_text_tool_calls() -> None:
    resp = {"choices": [{"message": {"role": "assistant", "content": None,
                                      "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    assert response_text(resp) == '[{"arguments":"{}","name":"f"}]'
    assert response_text(None) == "" and response_text({"choices": []}) == ""


def test_online_agreement_from_stored_pairs(make_db) -> None:
    store = Store(make_db("a"))
    policy = parse_policy({"name": "p", "match": {"model": "teacher", "metadata": {"task": "t"}},
                           "trigger": {"min_new_completions": 1}, "rollout": {"comparison": "label"}})
    before = store_auto.max_seq(store)
    recs = []
    # 4 pairs for matching traffic: 3 agree; 1 pair for other metadata (ignored); 1 unpaired.
    answers = [("spam", "Spam."), ("ham", "ham"), ("spam", "spam"), ("ham", "spam")]
    for i, (teacher, student) in enumerate(answers):
        req = {"model": "teacher", "messages": [{"role": "user", "content": f"q{i}"}]}
        recs.append(record_from_completion(_resp(teacher, f"c{i}"), req, metadata={"task": "t"}, source="proxy", served_by="teacher"))
        recs.append(record_from_completion(_resp(student, f"s{i}"), {**req, "model": "protege/p"}, metadata={"task": "t"},
                                           source="shadow", served_by="student", paired_with=f"c{i}"))
    req = {"model": "teacher", "messages": [{"role": "user", "content": "other"}]}
    recs.append(record_from_completion(_resp("a", "o1"), req, metadata={"task": "other"}, source="proxy"))
    recs.append(record_from_completion(_resp("b", "o2"), req, metadata={"task": "other"}, source="shadow", paired_with="o1"))
    recs.append(record_from_completion(_resp("x", "u1"), req, metadata={"task": "t"}, source="proxy"))
    insert_records(store, recs)
    pid = store_auto.put_policy(store, "p", policy.to_dict()).id
    route = store_auto.create_route(store, pid, "protege/p", "shadow", match_model="teacher", match_metadata={"task": "t"},
                                    percent=0, start_seq=before)
    r = online_agreement(store, route, policy)
    assert (r.n, r.agreed) == (4, 3) and r.rate == 0.75
    # pairs before the stage started do not count
    later = store_auto.set_route_stage(store, route.id, "canary", 10, store_auto.max_seq(store))
    assert online_agreement(store, later, policy).n == 0
    # eligible traffic excludes shadow and student-served answers
    assert store_auto.eligible_count(store, "teacher", {"task": "t"}) == 5
    store.close()
