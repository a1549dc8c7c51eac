"""The automatic loop says why it is not acting (below the trigger, min_interval, a fine-tune running)
in the worker's log, `worker --once`, `auto status` and the API; `auto validate` warns about a
min_items the trigger does not reach; a cycle with too few held-out items does not burn min_interval."""

from __future__ import annotations

import logging
import math
import time

import httpx2 as httpx
import orjson
from protege.distill.auto.policies import parse_policy, save_policy
from protege.distill.auto.waiting import iso
from protege.distill.auto.worker import Worker
from protege.store import Store, insert_records, record_from_completion
from protege.store import auto as store_auto
from protege.store import jobs as store_jobs
from typer.testing import CliRunner

from protege.cli import app
from tests.fixtures.auto import TEACHER, corpus, run_until, teacher_answer, topic_policy
from tests.fixtures.http import Served

POLICY = topic_policy(trigger={"min_new_completions": 5, "min_interval": "1h"})


def add(store: Store, start: int, n: int) -> None:
    recs = []
    for i, (q, label) in enumerate(corpus()[start:start + n]):
        req = {"model": TEACHER, "messages": [{"role": "user", "content": q}], "metadata": {"task": "topic"}}
        resp = {"id": f"chatcmpl-{start + i}", "object": "chat.completion", "created": int(time.time()), "model": TEACHER,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": teacher_answer(label)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}
        recs.append(record_from_completion(resp, req, source="proxy", served_by="teacher"))
    insert_records(store, recs)


def cli(db, *args: str):
    return CliRunner().invoke(app, ["--db", str(db), *args])


def test_below_trigger_and_min_interval_are_said_in_the_log_once_and_status(make_db, caplog) -> None:
    db = make_db("w")
    store = Store(db)
    pid = save_policy(store, parse_policy(POLICY)).id
    add(store, 0, 4)
    worker = Worker(store, None, interval=0.02)
    assert worker.run_once() == []
    below = "topic: waiting for traffic: 4 of 5 new eligible completions"
    assert worker.waiting == [below]
    # The log: a line each pass, at INFO when it is news (DEBUG when it repeats word for word).
    with caplog.at_level(logging.DEBUG, logger="protege.distill.auto"):
        worker.start()
        deadline = time.monotonic() + 10
        while sum(r.getMessage() == below for r in caplog.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        worker.stop()
    said = [r for r in caplog.records if r.getMessage() == below]
    assert len(said) >= 3 and [r.levelno for r in said][:2] == [logging.INFO, logging.DEBUG]
    assert sum(r.levelno == logging.INFO for r in said) == 1

    # min_interval: the count is there, the last cycle is too recent.
    cycle = store_auto.create_cycle(store, pid, until_seq=store_auto.max_seq(store))
    store_auto.update_cycle(store, cycle.id, state="rejected")
    add(store, 10, 6)
    worker.run_once()
    interval = f"topic: waiting for min_interval: 6 new eligible completions, next cycle at {iso(cycle.created_at + 3600)}"
    assert worker.waiting == [interval]
    store.close()

    r = cli(db, "worker", "--once")
    assert r.exit_code == 0, r.output
    assert interval in r.output.splitlines()
    r = cli(db, "auto", "status")
    assert f"  worker: {interval.removeprefix('topic: ')}" in r.output.splitlines()
    r = cli(db, "auto", "status", "--json")
    w = orjson.loads(r.stdout)["data"][0]["waiting"]
    assert w["kind"] == "min_interval" and w["new_eligible"] == 6 and w["next_at"] == math.ceil(cycle.created_at + 3600)


def test_a_running_fine_tune_is_said_and_the_worker_api_shows_it(make_db) -> None:
    """`serve --worker` as it runs: the worker API reports the pass and what each policy waits on."""
    from protege.app import build_app
    from protege.settings import Settings
    from tests.fakes.openai_finetune import FakeFineTuneServer

    ft = FakeFineTuneServer(step_seconds=30).start()  # a job that stays running through the test
    db = make_db("s")
    store = Store(db)
    policy = {**POLICY, "trigger": {"min_new_completions": 100}, "gate": {**POLICY["gate"], "min_items": 10},
              "student": {"backend": "openai", "base_model": "gpt-4.1-mini-2025-04-14"}}
    pid = save_policy(store, parse_policy(policy)).id
    add(store, 0, 120)
    # The fine-tuning API is the upstream's (the fake's), as a deployment against OpenAI has it.
    settings = Settings(db=db, upstream=ft.base_url, upstream_api_key="sk-test-ft", finetune_poll_interval=0.01)
    worker = Worker(store, settings)
    actions = worker.run_once()
    assert any("fine-tune ftjob_" in a for a in actions), actions
    job_id = store_auto.last_cycle(store, pid).job_id
    worker.run_once()
    assert len(worker.waiting) == 1 and worker.waiting[0].startswith(f"topic: waiting for fine-tune {job_id} ")
    store.close()

    srv_settings = Settings(db=db, upstream=ft.base_url, upstream_api_key="sk-test-ft", finetune_poll_interval=0.01, run_worker=True)
    served, sstore, writer = build_app(srv_settings)
    server = Served(served, fast=False)
    try:
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=server.url) as client:
            body = None
            while time.monotonic() < deadline:
                body = client.get("/protege/v1/worker").json()
                if body.get("last_pass_at"):
                    break
                time.sleep(0.05)
            assert body["object"] == "protege.worker" and body["running"] is True and body["last_pass_at"]
            (st,) = body["policies"]
            assert st["waiting"]["kind"] == "job_running" and st["waiting"]["job_id"] == job_id
            assert st["waiting"]["message"].startswith(f"waiting for fine-tune {job_id} ")
            one = client.get(f"/protege/v1/policies/{pid}/status").json()
            assert one["waiting"]["kind"] == "job_running"
    finally:
        server.stop(20)
        ft.stop()


def test_too_few_held_out_items_reject_before_training_and_do_not_burn_min_interval(make_db) -> None:
    store = Store(make_db("f"))
    policy = parse_policy({**POLICY, "trigger": {"min_new_completions": 20, "min_interval": "1h"},
                           "dataset": {"validation_fraction": 0.2}})
    pid = save_policy(store, policy).id
    add(store, 0, 100)  # 20 held-out items; the gate needs 30, so 150 examples
    worker = Worker(store, None)
    actions = worker.run_once()
    cycle = store_auto.last_cycle(store, pid)
    assert cycle.state == "rejected" and cycle.job_id is None, actions
    assert store_jobs.list_jobs(store, limit=10)[0] == []  # nothing trained on data that cannot pass the gate
    (d,), _ = store_auto.list_decisions(store, pid)
    assert d.outcome == "reject" and d.reason.startswith("too few held-out items: 20 (the gate needs 30)")
    assert any("retries after 50 more eligible completions" in a for a in actions)
    assert worker.waiting == ["topic: waiting for data: 0 of 50 more eligible completions "
                              "(the last dataset had 20 held-out items; the gate needs 30)"]
    add(store, 100, 30)
    worker.run_once()
    assert worker.waiting[0].startswith("topic: waiting for data: 30 of 50")
    add(store, 130, 25)
    # Enough data now: the next pass starts a cycle at once, though min_interval (1h) has not passed.
    actions = run_until(worker, lambda: store_auto.last_cycle(store, pid).state in ("promoted", "rejected", "failed"), timeout=60)
    cycle = store_auto.last_cycle(store, pid)
    assert cycle.job_id is not None and cycle.state == "promoted", (cycle.error, actions)
    assert len(store_auto.list_cycles(store, pid)) == 2
    # ...and that real cycle does count: the next one waits for min_interval.
    add(store, 200, 30)
    worker.run_once()
    assert worker.waiting[0].startswith("topic: waiting for min_interval: 30 new eligible completions")
    worker.wait_local_jobs()
    store.close()


def test_validate_warns_when_min_items_cannot_be_reached(tmp_path, make_db) -> None:
    db = make_db("x")
    f = tmp_path / "p.toml"
    f.write_text("""
[[policy]]
name = "topics"
match = { model = "gpt-4o-mini" }
trigger = { min_new_completions = 200 }
dataset = { validation_fraction = 0.1 }
gate = { metrics = ["label_accuracy"], min_items = 50 }
""")
    r = cli(db, "auto", "validate", str(f))
    assert r.exit_code == 0 and r.stdout == "1 policy OK: topics\n"
    assert r.stderr.splitlines() == [
        "warning: topics: gate.min_items 50 with dataset.validation_fraction 0.1 needs at least 500 examples in a cycle's "
        "dataset; trigger.min_new_completions 200 can start a cycle with fewer (it is rejected before training, and "
        "retried once there are 500)"
    ]
    f.write_text(f.read_text().replace("min_new_completions = 200", "min_new_completions = 500"))
    r = cli(db, "auto", "validate", str(f))
    assert r.exit_code == 0 and r.stderr == ""
