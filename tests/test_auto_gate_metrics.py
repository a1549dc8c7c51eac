"""Every evals metric family as a gate metric, through the worker (dataset -> classifier student ->
held-out predictions -> gate -> decision), each with its own paired bootstrap CI in the decision.

The classifier student answers in the teacher's exact JSON text, so generative metrics (BLEU,
chrF, ROUGE, JSON validity, graders, the judge) have real, non-trivial scores to gate on.
"""

from __future__ import annotations

import random

import pytest

from protege.distill.auto.worker import Worker
from protege.evals.metrics.base import Metric
from protege.distill.auto.policies import PolicyError, parse_policy, save_policy
from protege.store import Store, insert_records
from protege.store import auto as store_auto
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.auto import captured, corpus, fill, run_until, topic_policy

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"], "additionalProperties": False}


def policy(metrics: list, tolerance: float = 0.15) -> dict:
    return topic_policy(trigger={"min_new_completions": 100}, gate={"metrics": metrics, "tolerance": tolerance, "min_items": 30})


def decide_once(db: str, spec: dict, noisy: bool = False) -> dict:
    store = Store(db)
    try:
        pid = save_policy(store, parse_policy(spec)).id
        if noisy:  # a teacher whose labels are noise: nothing can learn them, but the answers stay JSON
            rng = random.Random(1)
            insert_records(store, [captured(q, rng.choice(["a", "b", "c", "d"]), i) for i, (q, _l) in enumerate(corpus())])
        else:
            fill(store)
        actions = run_until(Worker(store, None), lambda: store_auto.last_cycle(store, pid).state in ("promoted", "rejected", "failed"), 60)
        cycle = store_auto.last_cycle(store, pid)
        assert cycle.state in ("promoted", "rejected"), (cycle.error, actions)
        (decision,), _ = store_auto.list_decisions(store, pid)
        return {"state": cycle.state, **store_auto.as_dict(decision)}
    finally:
        store.close()


# The metric families differ in scoring only: DuckDB alone (each is a whole worker cycle, ~10-30 s).
# The same store path (dataset, eval run, gate decision) runs on PostgreSQL in the eval-run tests
# below and in test_auto_worker.py.
FAMILY_ONLY = pytest.mark.backends("duckdb")


def by_metric(d: dict) -> dict[str, dict]:
    return {m["metric"]: m for m in d["details"]["gate"]["metrics"]}


def assert_ci(m: dict) -> None:
    assert m["n"] >= 30 and m["low"] <= m["diff"] <= m["high"]
    assert m["signature"] and m["test"] in ("paired-bootstrap", "mcnemar-exact", "mcnemar-chi2")


@FAMILY_ONLY
def test_sacrebleu_family_bleu_and_chrf(make_db) -> None:
    d = decide_once(make_db("g"), policy(["bleu", "chrf", "chrf++"]))
    ms = by_metric(d)
    assert set(ms) == {"bleu", "chrf", "chrf++"} and d["state"] == "promoted"
    for m in ms.values():
        assert_ci(m)
        assert m["teacher"] == pytest.approx(1.0) and 0.5 < m["student"] < 1.0  # the teacher is the reference
        assert m["test"] == "paired-bootstrap" and m["low"] < m["high"]
    assert ms["bleu"]["signature"].startswith("nrefs:") or "bleu" in ms["bleu"]["signature"].lower()


@FAMILY_ONLY
def test_rouge_family(make_db) -> None:
    d = decide_once(make_db("g"), policy(["rougeL", "rouge1", "rougeLsum"]))
    ms = by_metric(d)
    assert d["state"] == "promoted" and set(ms) == {"rougeL", "rouge1", "rougeLsum"}
    for m in ms.values():
        assert_ci(m)
        assert 0.5 < m["student"] < 1.0 and m["diff"] < 0


@FAMILY_ONLY
def test_exact_and_label_family_rejects_a_student_that_cannot_learn(make_db) -> None:
    d = decide_once(make_db("g"), policy(["exact_match", "label_accuracy", "macro_f1"], tolerance=0.05), noisy=True)
    assert d["state"] == "rejected"
    ms = by_metric(d)
    for name in ("exact_match", "label_accuracy", "macro_f1"):
        assert_ci(ms[name])
        assert ms[name]["passed"] is False and ms[name]["high"] < 0
    assert ms["exact_match"]["test"].startswith("mcnemar") and ms["macro_f1"]["test"] == "paired-bootstrap"


@FAMILY_ONLY
def test_json_family_is_reference_free(make_db) -> None:
    """Noise labels sink exact match, but every answer is still valid, schema-conforming JSON."""
    d = decide_once(make_db("g"), policy(["json_valid", {"name": "json_schema", "schema": SCHEMA}, "exact_match"], tolerance=0.05), noisy=True)
    ms = by_metric(d)
    assert d["state"] == "rejected" and "exact_match" in d["reason"] and "json" not in d["reason"]
    for name in ("json_valid", "json_schema"):
        assert_ci(ms[name])
        assert ms[name]["passed"] is True and ms[name]["student"] == 1.0 and ms[name]["teacher"] == 1.0
    assert ms["exact_match"]["passed"] is False


@FAMILY_ONLY
def test_graders_family(make_db) -> None:
    metrics = [{"name": "string_check", "operation": "eq"},
               {"name": "text_similarity", "evaluation_metric": "fuzzy_match", "label": "fuzzy"},
               {"name": "text_similarity", "evaluation_metric": "rouge_l", "pass_threshold": 0.9, "label": "rouge_pass"}]
    d = decide_once(make_db("g"), policy(metrics))
    ms = by_metric(d)
    assert set(ms) == {"string_check", "fuzzy", "rouge_pass"} and d["state"] == "promoted"
    for m in ms.values():
        assert_ci(m)
    assert ms["string_check"]["test"].startswith("mcnemar") and ms["fuzzy"]["test"] == "paired-bootstrap"
    assert "rouge_l" in ms["rouge_pass"]["signature"]


@FAMILY_ONLY
def test_judge_gates_on_win_rate_against_the_teacher(make_db, monkeypatch) -> None:
    truth = dict(corpus())

    def judge(body: dict) -> str:
        """Knows the right topic of each question: prefers the answer that has it."""
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        question = user.split("[User request]\n", 1)[1].split("\n\n[Response A]", 1)[0]
        a = user.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]
        b = user.split("[Response B]\n", 1)[1].split("\n\nWhich response", 1)[0]
        right = f'"{truth[question]}"'
        return "A" if right in a and right not in b else "B" if right in b and right not in a else "TIE"

    server = start_fake_openai(reply=judge)
    monkeypatch.setenv("JUDGE_KEY", "sk-judge")
    try:
        d = decide_once(make_db("g"), policy([{"name": "judge", "model": "judge-1", "base_url": server.base_url, "api_key_env": "JUDGE_KEY"}]))
    finally:
        server.stop()
    m = by_metric(d)["judge"]
    assert_ci(m)
    assert m["teacher"] == 0.5 and m["student"] < 0.5  # the student loses wherever it differs from the right teacher
    assert m["diff"] == pytest.approx(m["student"] - 0.5) and m["test"] == "paired-bootstrap"
    differing = len(d["details"]["examples_disagreeing"])
    chats = server.chat_requests
    assert differing and len(chats) >= 2 * differing and len(chats) % 2 == 0  # both orders, identical answers free
    assert all(c["headers"]["authorization"] == "Bearer sk-judge" and c["json"]["model"] == "judge-1" for c in chats)
    assert all("[User request]\n" in c["json"]["messages"][-1]["content"] and "[User request]\n\n" not in c["json"]["messages"][-1]["content"]
               for c in chats)  # the judge sees the prompt
    assert m["passed"] is (m["low"] > -0.15)


@pytest.mark.parametrize(
    ("metrics", "words"),
    [
        (["rouge_typo"], "unknown gate metric 'rouge_typo'"),
        ([{"name": "json_schema"}], "json_schema"),
        ([{"name": "judge"}], "judge needs a model"),
        ([{"name": "judge", "model": "m", "api_key": "sk-x"}], "unknown option 'api_key'"),
        (["rougeL", "rougeL"], "listed twice"),
    ],
)
def test_bad_gate_metrics_are_one_line_policy_errors(metrics, words) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(policy(metrics))
    assert words in exc.value.message and "\n" not in exc.value.message and exc.value.param == "gate.metrics"


def test_the_gate_evaluation_is_also_an_eval_run_with_table_metrics(make_db) -> None:
    from protege.store import evals as store_evals

    db = make_db("g")
    d = decide_once(db, policy(["rougeL", {"name": "json_schema", "schema": SCHEMA, "label": "schema"}]))
    assert set(by_metric(d)) == {"rougeL", "schema"}
    store = Store(db)
    try:
        run = store_evals.get_run(store, d["details"]["eval_run_id"])
        assert run["status"] == "completed"
        assert run["spec"]["metrics"] == ["rougeL", {"name": "json_schema", "schema": SCHEMA}]
    finally:
        store.close()


def test_a_judge_without_its_key_fails_the_cycle_with_a_clear_reason(make_db, monkeypatch) -> None:
    monkeypatch.delenv("JUDGE_KEY_MISSING", raising=False)
    store = Store(make_db("k"))
    try:
        spec = policy([{"name": "judge", "model": "judge-1", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "JUDGE_KEY_MISSING"}])
        pid = save_policy(store, parse_policy(spec)).id
        fill(store)
        run_until(Worker(store, None), lambda: store_auto.last_cycle(store, pid).state in ("promoted", "rejected", "failed"), 60)
        cycle = store_auto.last_cycle(store, pid)
        assert cycle.state == "failed" and "JUDGE_KEY_MISSING (api_key_env) is not set" in cycle.error
    finally:
        store.close()


class CountedMatch(Metric):
    """Exact match that records every batch of pairs it is asked to score (all instances share the record)."""

    name = "counted_match"
    scale = "binary"
    calls: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def item_scores(self, hyps, refs) -> list[float]:
        CountedMatch.calls.append((tuple(hyps), tuple(refs)))
        return [1.0 if h.strip() == r.strip() else 0.0 for h, r in zip(hyps, refs)]

    def signature(self) -> str:
        return "counted_match"


@pytest.fixture
def counted_match(monkeypatch):
    """``counted_match`` in the metrics registry, as a metric module's METRICS table puts it there."""
    from protege.evals import metrics

    monkeypatch.setitem(metrics._load_registry(), "counted_match", CountedMatch)
    CountedMatch.calls.clear()
    return CountedMatch


def test_the_held_out_outputs_are_scored_once_and_the_gate_decides_on_the_eval_run(make_db, counted_match) -> None:
    from protege.store import evals as store_evals

    spec = policy(["exact_match", "counted_match"], tolerance=0.05)
    spec["gate"]["confidence"] = 0.9
    db = make_db("g")
    d = decide_once(db, spec, noisy=True)
    store = Store(db)
    try:
        run = store_evals.get_run(store, d["details"]["eval_run_id"])
        items = store_evals.list_items(store, run["id"])
        outputs = {o["item_id"]: o["output"] for o in store_evals.list_outputs(store, run["id"])}
    finally:
        store.close()
    teacher = tuple(it["teacher_output"] for it in items)
    refs = tuple(it["reference"] for it in items)
    student = tuple(outputs[it["id"]] for it in items)
    # One scoring pass per system of the eval run, and none besides: the gate scored nothing itself.
    assert sorted(counted_match.calls) == sorted([(teacher, refs), (student, refs)])
    results = run["results"]
    for name in ("exact_match", "counted_match"):
        m, scores, paired = by_metric(d)[name], results["scores"][name], results["paired"][name]["student"]
        assert (m["student"], m["teacher"], m["n"]) == (scores["student"]["score"], scores["teacher"]["score"], paired["n"])
        assert (m["diff"], m["low"], m["high"], m["p_value"], m["test"]) == (
            paired["diff"], paired["low"], paired["high"], paired["p_value"], paired["test"])
        assert m["confidence"] == 0.9 and m["passed"] is (m["low"] > -0.05)
    assert by_metric(d)["counted_match"]["low"] == by_metric(d)["exact_match"]["low"]  # the same scores, the same CI
