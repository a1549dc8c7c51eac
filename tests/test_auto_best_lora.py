"""``backend = "best"`` with the real LoRA backend (a tiny random chat model, a few steps in its own
job process) beside the classifier: both train on the same rows, the worker waits for both, and the
choice names both. The tiny random model cannot learn the task in two steps, so the classifier wins
on score; where LoRA students are served in-process (protege/<name>) the LoRA arm is scored and
timed like any other, else it is reported as not evaluable."""

from __future__ import annotations

import pytest

from protege.distill.auto.worker import Worker
from protege.distill.auto.policies import parse_policy, save_policy
from protege.store import Store
from protege.store import auto as store_auto
from protege.store import jobs as store_jobs
from tests.fixtures.auto import fill, run_until, topic_policy

pytest.importorskip("trl")


# Heavy (it trains a LoRA student in a job process): DuckDB only. The store side of a "best" cycle
# (candidate jobs on the same rows, the select decision, the gate) runs on PostgreSQL too in
# test_auto_best.py, with the classifier and a cloud candidate.
@pytest.mark.backends("duckdb")
def test_classifier_and_lora_compete_on_the_same_rows(make_db, tiny_chat_model) -> None:
    lora = {"backend": "lora", "base_model": str(tiny_chat_model),
            "hyperparameters": {"max_steps": 2, "batch_size": 8, "max_length": 64, "eval_generations": 0}}
    spec = topic_policy(trigger={"min_new_completions": 100}, rollout={"stages": ["shadow"]},
                        student={"backend": "best", "candidates": ["classifier", lora], "latency_budget_ms": 5000})
    store = Store(make_db("l"))
    try:
        pid = save_policy(store, parse_policy(spec)).id
        fill(store)
        worker = Worker(store, None, interval=0.2)
        actions = run_until(worker, lambda: store_auto.last_cycle(store, pid).state in ("promoted", "rejected", "failed"), 600)
        cycle = store_auto.last_cycle(store, pid)
        jobs = {j["metadata"]["protege_candidate"]: j for j in store_jobs.list_jobs(store, limit=10)[0]}
        assert set(jobs) == {"classifier", "lora"}, actions
        assert jobs["lora"]["backend"] == "lora" and jobs["lora"]["status"] == "succeeded", jobs["lora"].get("error")
        assert jobs["lora"]["training_file"] == jobs["classifier"]["training_file"]
        assert jobs["lora"]["fine_tuned_model"] == "protege/topic-lora@v1"
        rows, _ = store_auto.list_decisions(store, pid)
        (sel,) = [store_auto.as_dict(r) for r in rows if r.kind == "select"]
        by = {c["label"]: c for c in sel["details"]["candidates"]}
        assert sel["details"]["winner"] == "classifier" and "lora:" in sel["reason"]
        # The LoRA student is served in-process (distill/finetune/served.py): scored and timed.
        assert by["lora"]["score"] is not None, by["lora"]
        assert by["lora"]["score"] < by["classifier"]["score"] and by["lora"]["latency_ms_p50"] > 0
        assert cycle.state == "promoted" and cycle.student_model == "protege/topic-classifier@v1"
    finally:
        store.close()
