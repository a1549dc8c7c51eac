"""``backend = "best"``: train several students on the same data, keep the best scorer on a
selection split that answers within the latency budget, record why, then gate the winner on the
dataset's held-out split. Real parts: DuckDB, the dataset builder, the classifier student, the jobs
runner; the cloud candidate is a fine-tune on the fake OpenAI fine-tuning API, served by a fake
OpenAI chat server that answers a little slower than the classifier and always right."""

from __future__ import annotations

import openai
import pytest

from protege.distill.auto.worker import Worker
from protege.distill.auto.policies import PolicyError, parse_policy, save_policy
from protege.store import Store
from protege.store import auto as store_auto
from tests.fakes.openai_finetune import FakeFineTuneServer
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.auto import corpus, fill, run_until, teacher_answer, topic_policy

CLOUD = {"backend": "openai", "base_model": "gpt-4o-mini-2024-07-18"}


def policy(candidates: list, budget: float | None = None, **student) -> dict:
    spec = {"backend": "best", "candidates": candidates, **student}
    if budget is not None:
        spec["latency_budget_ms"] = budget
    return topic_policy(trigger={"min_new_completions": 100}, student=spec, rollout={"stages": ["shadow"]})


@pytest.fixture(scope="module")
def cloud():
    """A fine-tuning API and a chat server for the fine-tuned model (~20 ms per answer, always right)."""
    truth = dict(corpus())

    def reply(body: dict) -> str:
        question = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        return teacher_answer(truth[question])

    chat = start_fake_openai(reply=reply, delay=0.02)
    with FakeFineTuneServer(step_seconds=0.02) as ft:
        yield {"ft": ft, "chat": chat}
    chat.stop()


def run(make_db, spec: dict, cloud: dict | None = None) -> tuple[Store, str, store_auto.AutoCycle, list[str]]:
    store = Store(make_db("b"))
    pid = save_policy(store, parse_policy(spec)).id
    fill(store)
    kw = {}
    if cloud is not None:
        kw = {"backend_options": {"openai": {"base_url": cloud["ft"].base_url, "api_key": "sk-test", "poll_interval": 0.01}},
              "student_client": openai.OpenAI(base_url=cloud["chat"].base_url, api_key="sk-test")}
    worker = Worker(store, None, **kw)
    actions = run_until(worker, lambda: store_auto.last_cycle(store, pid).state in ("promoted", "rejected", "failed"), 90)
    return store, pid, store_auto.last_cycle(store, pid), actions


def decisions(store: Store, pid: str, kind: str) -> list[dict]:
    rows, _ = store_auto.list_decisions(store, pid)
    return [store_auto.as_dict(r) for r in rows if r.kind == kind]


def test_without_a_budget_the_best_scorer_wins(make_db, cloud) -> None:
    store, pid, cycle, actions = run(make_db, policy(["classifier", CLOUD]), cloud)
    try:
        assert cycle.state == "promoted", (cycle.error, actions)
        (sel,) = decisions(store, pid, "select")
        d = sel["details"]
        assert sel["outcome"] == "select" and d["winner"] == "openai" and d["metric"] == "label_accuracy"
        by = {c["label"]: c for c in d["candidates"]}
        assert by["openai"]["score"] == 1.0 > by["classifier"]["score"] > 0.5
        assert by["openai"]["latency_ms_p50"] >= 20 > by["classifier"]["latency_ms_p50"]
        assert by["openai"]["n"] == by["classifier"]["n"] >= 10  # the same selection prompts
        assert sel["reason"].startswith("openai scores best on label_accuracy: ") and "classifier: label_accuracy" in sel["reason"]
        assert cycle.student_model == by["openai"]["model"] and cycle.student_model.startswith("ft:gpt-4o-mini-2024-07-18:")
        # both candidates trained on the same rows (train split minus the selection slice), that slice as validation
        from protege.store import jobs as store_jobs

        jobs = {j["metadata"]["protege_candidate"]: j for j in store_jobs.list_jobs(store, limit=10)[0]}
        assert set(jobs) == {"classifier", "openai"}
        assert jobs["classifier"]["training_file"] == jobs["openai"]["training_file"]
        assert jobs["classifier"]["validation_file"] == jobs["openai"]["validation_file"]
        assert jobs["classifier"]["training_file"].endswith("fit.jsonl") and jobs["openai"]["validation_file"].endswith("selection.jsonl")
        assert cycle.job_id == jobs["openai"]["id"]
        (gate,) = decisions(store, pid, "gate")
        assert gate["outcome"] == "promote" and gate["details"]["selection"]["decision_id"] == sel["id"]
        assert gate["details"]["selection"]["backend"] == "openai"
        (route,) = store_auto.active_routes(store)
        assert route.student_model == cycle.student_model
    finally:
        store.close()


# The budget changes the choice, not what is stored: DuckDB only (a whole best-of cycle, ~15-20 s); the
# same cycle's store path runs on PostgreSQL in test_without_a_budget_the_best_scorer_wins.
@pytest.mark.backends("duckdb")
def test_within_a_budget_the_fast_student_wins_and_the_reason_says_why(make_db, cloud) -> None:
    store, pid, cycle, actions = run(make_db, policy(["classifier", CLOUD], budget=10), cloud)
    try:
        assert cycle.state == "promoted", (cycle.error, actions)
        (sel,) = decisions(store, pid, "select")
        by = {c["label"]: c for c in sel["details"]["candidates"]}
        assert sel["details"]["winner"] == "classifier" and sel["details"]["latency_budget_ms"] == 10
        assert by["openai"]["within_budget"] is False and by["classifier"]["within_budget"] is True
        assert "classifier scores best on label_accuracy within the budget (openai scored higher but is too slow)" in sel["reason"]
        assert "over the 10 ms budget" in sel["reason"]
        assert cycle.student_model == "protege/topic-classifier@v1"
        (route,) = store_auto.active_routes(store)
        assert route.student_model == "protege/topic-classifier@v1"
    finally:
        store.close()


def test_a_candidate_that_cannot_start_is_recorded_and_the_others_compete(make_db) -> None:
    """No Azure endpoint is configured: that candidate cannot start; the classifier still runs."""
    azure = {"backend": "azure", "base_model": "gpt-4.1-mini"}
    store, pid, cycle, actions = run(make_db, policy(["classifier", azure]))
    try:
        assert cycle.state == "promoted", (cycle.error, actions)
        (cand,) = decisions(store, pid, "candidate")
        assert cand["outcome"] == "not_started" and "AZURE_OPENAI_ENDPOINT" in cand["reason"]
        (sel,) = decisions(store, pid, "select")
        by = {c["label"]: c for c in sel["details"]["candidates"]}
        assert by["azure"]["status"] == "not_started" and "AZURE_OPENAI_ENDPOINT" in by["azure"]["error"]
        assert sel["details"]["winner"] == "classifier" and "azure: not_started" in sel["reason"]
    finally:
        store.close()


# The budget changes the choice, not what is stored: DuckDB only (a whole best-of cycle, ~15-20 s); the
# same cycle's store path runs on PostgreSQL in test_without_a_budget_the_best_scorer_wins.
@pytest.mark.backends("duckdb")
def test_no_candidate_within_the_budget_rejects_the_cycle(make_db, cloud) -> None:
    store, pid, cycle, actions = run(make_db, policy(["classifier", CLOUD], budget=1e-6), cloud)
    try:
        assert cycle.state == "rejected"
        (sel,) = decisions(store, pid, "select")
        assert sel["outcome"] == "reject" and sel["reason"].startswith("no candidate answers within 1e-06 ms")
        assert store_auto.active_routes(store) == [] and decisions(store, pid, "gate") == []
    finally:
        store.close()


@pytest.mark.parametrize(
    ("student", "words"),
    [
        ({"backend": "best", "candidates": ["classifier"]}, "at least two different candidates"),
        ({"backend": "best", "candidates": ["classifier", "local"]}, "at least two different candidates"),
        ({"backend": "best", "candidates": ["classifier", "openai"]}, "candidate 'openai' needs base_model"),
        ({"backend": "best", "candidates": ["classifier", "lora"]}, "candidate 'lora' needs base_model"),
        ({"backend": "lora"}, "backend 'lora' needs base_model"),
        ({"backend": "local", "latency_budget_ms": 5}, "latency_budget_ms applies to backend = \"best\" only"),
        ({"backend": "best", "candidates": ["classifier", "vertex"]}, "student.candidates"),
        ({"backend": "best", "latency_budget_ms": 0}, "greater than 0"),
    ],
)
def test_best_policies_are_validated(student, words) -> None:
    spec = policy(["classifier", "lora"])
    spec["student"] = student
    with pytest.raises(PolicyError) as exc:
        parse_policy(spec)
    assert words in exc.value.message and "\n" not in exc.value.message


def test_lora_is_a_backend_and_a_default_candidate() -> None:
    p = parse_policy({**policy(["classifier", "lora"]), "student": {"backend": "lora", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                     "hyperparameters": {"lora_r": 16}}})
    assert p.student.backend == "lora" and p.student.hyperparameters == {"lora_r": 16}
    best = parse_policy({**policy(["classifier", "lora"]), "student": {"backend": "best", "base_model": "m", "latency_budget_ms": 300}})
    labels = [(c.label, c.job_backend, c.base_model) for c in best.student.candidate_specs()]
    assert labels == [("classifier", "local", None), ("lora", "lora", "m")]
