"""The loop over real parts (dataset builder, local student, jobs, gate) on a real store (each backend):
trigger, train, evaluate on the held-out split, decide, roll out; and resume after a crash or a
SIGKILL without a second job."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from protege.distill.auto.worker import Worker, due
from protege.distill.auto.status import policy_status
from protege.distill.auto.policies import parse_policy, save_policy
from protege.store import Store, insert_records
from protege.store import auto as store_auto

from tests.fixtures.auto import (POLICY, captured, corpus, fill, job_rows, policy_toml, run_until, started_job_lines,
                                 teacher_answer)


def test_trigger_train_gate_promote(make_db) -> None:
    store = Store(make_db("w"))
    pid = save_policy(store, parse_policy(POLICY)).id
    worker = Worker(store, None)
    fill(store, 150)
    assert worker.run_once() == []  # 150 < 200: not due
    assert due(store, pid, parse_policy(POLICY))[1]["new_eligible"] == 150
    fill(store, start=1000)
    actions = run_until(worker, lambda: store_auto.last_cycle(store, pid).state in ("promoted", "rejected", "failed"))
    cycle = store_auto.last_cycle(store, pid)
    assert cycle.state == "promoted", (cycle.error, actions)
    assert any("dataset ds_" in a for a in actions) and any("fine-tune ftjob_" in a for a in actions)
    assert cycle.student_model == "protege/topic@v1"
    (job,) = job_rows(store)
    assert job["id"] == cycle.job_id and job["validation_file"] is None  # the held-out split is never trained on
    (decision,), _ = store_auto.list_decisions(store, pid)
    d = store_auto.as_dict(decision)
    assert d["kind"] == "gate" and d["outcome"] == "promote"
    m = d["details"]["gate"]["metrics"][0]
    assert m["metric"] == "label_accuracy" and m["n"] >= 30 and m["low"] > -0.15 and m["passed"] is True
    assert d["details"]["n_items"] == m["n"]
    # the same evaluation is an eval run (reports via `protege eval report`)
    from protege.store import evals as store_evals

    run = store_evals.get_run(store, d["details"]["eval_run_id"])
    assert run["status"] == "completed" and run["n_items"] == m["n"]
    (route,) = store_auto.active_routes(store)
    assert route.stage == "shadow" and route.student_model == "protege/topic@v1" and route.percent == 0
    st = policy_status(store, store_auto.get_policy(store, pid))
    assert st["eligible_since_last_run"] == 0 and st["job"]["status"] == "succeeded"
    assert st["last_evaluation"]["passed"] is True and st["route"]["stage"] == "shadow"
    # no new traffic: nothing more to do
    assert worker.run_once() == []
    store.close()


def test_gate_rejects_a_student_that_cannot_match_the_teacher(make_db) -> None:
    store = Store(make_db("w"))
    strict = {**POLICY, "gate": {"metrics": ["exact_match"], "tolerance": 0.0, "min_items": 30}}
    pid = save_policy(store, parse_policy(strict)).id
    # a teacher whose labels are noise: no student can learn them
    rng = random.Random(1)
    insert_records(store, [captured(q, rng.choice(["a", "b", "c", "d"]), i) for i, (q, _l) in enumerate(corpus())])
    run_until(Worker(store, None), lambda: store_auto.last_cycle(store, pid).state in ("promoted", "rejected", "failed"))
    cycle = store_auto.last_cycle(store, pid)
    assert cycle.state == "rejected"
    (decision,), _ = store_auto.list_decisions(store, pid)
    assert decision.outcome == "reject" and "CI lower bound" in decision.reason
    assert store_auto.active_routes(store) == []
    store.close()


def test_too_little_data_fails_the_cycle_with_a_reason(make_db) -> None:
    store = Store(make_db("w"))
    pid = save_policy(store, parse_policy({**POLICY, "trigger": {"min_new_completions": 1},
                                           "dataset": {"validation_fraction": 0.5}})).id
    fill(store, 3)
    actions = Worker(store, None).run_once()
    cycle = store_auto.last_cycle(store, pid)
    assert cycle.state in ("failed", "rejected"), actions
    (decision,), _ = store_auto.list_decisions(store, pid)
    assert decision.outcome == "reject"
    store.close()


def test_crash_between_job_start_and_recording_adopts_the_job(make_db, monkeypatch) -> None:
    path = make_db("w")
    store = Store(path)
    pid = save_policy(store, parse_policy(POLICY)).id
    fill(store)
    real = store_auto.update_cycle

    def crash_when_recording_job(s, cycle_id, **fields):
        if "job_id" in fields:
            raise KeyboardInterrupt("worker killed")
        return real(s, cycle_id, **fields)

    monkeypatch.setattr(store_auto, "update_cycle", crash_when_recording_job)
    with pytest.raises(KeyboardInterrupt):
        Worker(store, None).run_once()
    monkeypatch.setattr(store_auto, "update_cycle", real)
    assert store_auto.last_cycle(store, pid).state == "launching"
    (job,) = job_rows(store)
    # the old process is gone: wait for its thread, then reopen the file as a new process would
    from protege.distill.finetune.local_student import local_backend

    local_backend(store=store).join(job["provider_job_id"], 30)
    store.close()
    store = Store(path)
    actions = run_until(Worker(store, None), lambda: store_auto.last_cycle(store, pid).state == "promoted")
    assert any(f"adopted fine-tune {job['id']}" in a for a in actions), actions
    assert [j["id"] for j in job_rows(store)] == [job["id"]]
    from protege.store import jobs as store_jobs

    assert [s["version"] for s in store_jobs.list_students(store, "topic")] == [1]
    store.close()


def test_sigkilled_worker_resumes_without_a_second_job(tmp_path, make_db) -> None:
    db = make_db("k")
    store = Store(db)
    data_dir = store.data_dir  # the worker process runs in the repo root: its artifacts go where this test reopens them
    fill(store)
    store.close()
    pfile = tmp_path / "policies.toml"

    pfile.write_text(policy_toml(POLICY))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "protege", "--db", db, "--data-dir", str(data_dir), "worker", "--policies", str(pfile), "--interval", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(Path(__file__).parent.parent))
    try:
        seen = started_job_lines(proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    assert any("started" in s for s in seen), seen
    store = Store(db, data_dir=data_dir)
    pid = store_auto.get_policy(store, "topic").id
    cycle = store_auto.last_cycle(store, pid)
    assert cycle.state in ("training", "launching", "evaluating", "promoted")
    (job,) = job_rows(store)
    print(f"killed at cycle state {cycle.state!r}, job status {job['status']!r}")
    run_until(Worker(store, None), lambda: store_auto.last_cycle(store, pid).state == "promoted")
    assert [j["id"] for j in job_rows(store)] == [job["id"]]
    from protege.store import jobs as store_jobs

    students = [s for s in store_jobs.list_students(store, "topic")]
    assert len(students) == 1 and students[0]["job_id"] == job["id"]
    assert store_auto.last_cycle(store, pid).student_model == f"protege/topic@v{students[0]['version']}"
    store.close()


def test_local_job_whose_thread_died_is_retrained_into_the_same_job(make_db, monkeypatch) -> None:
    from protege.distill.finetune import local_student
    from protege.store import jobs as store_jobs

    path = make_db("w")
    store = Store(path)
    pid = save_policy(store, parse_policy(POLICY)).id
    fill(store)

    def dies_while_running(self, run, spec, name, seed):  # the process "dies" mid-training
        run.status = "running"

    monkeypatch.setattr(local_student.LocalStudentBackend, "_train", dies_while_running)
    worker = Worker(store, None)
    worker.run_once()
    time.sleep(0.1)
    worker.run_once()
    cycle = store_auto.last_cycle(store, pid)
    assert cycle.state == "training"
    (job,) = job_rows(store)
    assert job["status"] == "running" and store_jobs.list_students(store, "topic") == []
    monkeypatch.undo()
    store.close()
    store = Store(path)  # a new process: no training thread for this job exists
    run_until(Worker(store, None), lambda: store_auto.last_cycle(store, pid).state == "promoted")
    (again,) = job_rows(store)
    assert again["id"] == job["id"] and again["status"] == "succeeded"
    events = [e["message"] for e in store_jobs.list_events(store, job["id"], limit=100)[0]]
    assert any("Training restarted" in m for m in events)
    (student,) = store_jobs.list_students(store, "topic")
    assert student["version"] == 1 and student["job_id"] == job["id"]
    store.close()


def test_openai_backend_cycle_against_fakes(make_db) -> None:
    """Cloud student: the fine-tune goes through the openai SDK to the fake Fine-tuning API and is
    polled pass by pass; the gate asks the fine-tuned model (via the SDK) on the held-out prompts."""
    from protege.settings import Settings
    from tests.fakes.openai_finetune import FakeFineTuneServer
    from tests.fakes.openai_upstream import start_fake_openai

    labels = dict(corpus())
    asked: list[str] = []

    def student(body: dict) -> str:
        asked.append(body["model"])
        return teacher_answer(labels.get(body["messages"][-1]["content"], "tech"))

    chat = start_fake_openai(student)
    ft = FakeFineTuneServer(step_seconds=0.5).start()  # ~3 s a job: a loaded machine must not finish it within the first pass
    db = make_db("o")
    store = Store(db)
    try:
        policy = {**POLICY, "student": {"backend": "openai", "base_model": "gpt-4.1-mini-2025-04-14", "hyperparameters": {"n_epochs": 2}}}
        pid = save_policy(store, parse_policy(policy)).id
        fill(store)
        settings = Settings(db=db, upstream=chat.base_url, upstream_api_key="sk-test-upstream")
        worker = Worker(store, settings, backend_options={"openai": {"base_url": ft.base_url, "api_key": "sk-test-ft", "poll_interval": 0.01}})
        first = worker.run_once()
        assert any("fine-tune ftjob_" in a for a in first)
        assert store_auto.last_cycle(store, pid).state == "training"  # the pass returned without waiting for the job
        run_until(worker, lambda: store_auto.last_cycle(store, pid).state in ("promoted", "rejected", "failed"))
        cycle = store_auto.last_cycle(store, pid)
        assert cycle.state == "promoted", cycle.error
        assert cycle.student_model.startswith("ft:gpt-4.1-mini-2025-04-14:")
        (job,) = job_rows(store)
        assert job["backend"] == "openai" and job["status"] == "succeeded" and job["metadata"]["protege_cycle"] == cycle.id
        creates = [r for r in ft.requests if r["method"] == "POST" and r["path"].endswith("/fine_tuning/jobs")]
        assert len(creates) == 1
        sent = creates[0]["json"]
        assert sent["model"] == "gpt-4.1-mini-2025-04-14" and '"n_epochs": 2' in json.dumps(sent)
        assert sent.get("validation_file") is None  # the held-out split is never sent for training
        gate_n = store_auto.as_dict(store_auto.list_decisions(store, pid)[0][0])["details"]["n_items"]
        assert asked == [cycle.student_model] * gate_n
    finally:
        store.close()
        ft.stop()
        chat.stop()


def test_a_refused_fine_tune_fails_the_cycle_once(make_db, monkeypatch) -> None:
    from protege.settings import Settings

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("PROTEGE_UPSTREAM_API_KEY", raising=False)
    db = make_db("n")
    store = Store(db)
    policy = {**POLICY, "student": {"backend": "openai", "base_model": "gpt-4.1-mini-2025-04-14"}}
    pid = save_policy(store, parse_policy(policy)).id
    fill(store)
    worker = Worker(store, Settings(db=db, upstream="http://127.0.0.1:9/v1"))
    actions = worker.run_once()
    cycle = store_auto.last_cycle(store, pid)
    assert cycle.state == "failed" and "OPENAI_API_KEY" in cycle.error, actions
    assert job_rows(store) == []
    assert worker.run_once() == []  # not retried until new traffic fires the trigger again
    (d,), _ = store_auto.list_decisions(store, pid)
    assert d.outcome == "reject" and "OPENAI_API_KEY" in d.reason
    store.close()
