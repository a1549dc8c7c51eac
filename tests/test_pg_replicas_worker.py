"""Several workers on one PostgreSQL database: a policy's cycle is run by one worker at a time (an
advisory lock on a connection that lives for the cycle), and a worker SIGKILLed mid-cycle leaves a
cycle the other worker resumes without a second fine-tune (PostgreSQL drops the dead session's lock).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protege.distill.auto.worker import Worker
from protege.store import Store
from protege.store import auto as store_auto
from tests import postgres
from tests.fixtures.auto import POLICY, corpus, fill, job_rows, policy_toml, run_until, started_job_lines, teacher_answer

pytestmark = pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")


def test_the_policy_lock_is_one_workers_and_dies_with_its_session(postgres_server, tmp_path):
    db = postgres_server.database()
    a, b = Store(db, data_dir=tmp_path), Store(db, data_dir=tmp_path)
    try:
        la, lb = store_auto.PolicyLock(a, "policy_x"), store_auto.PolicyLock(b, "policy_x")
        assert la.acquire() and la.acquire()  # taken, then confirmed
        assert not lb.acquire() and not lb.held
        assert store_auto.PolicyLock(b, "policy_y").acquire()  # another policy is free
        # The holder's session ends without an unlock (as when its process is killed).
        a.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()")
        deadline = time.monotonic() + 5
        while not lb.acquire():
            assert time.monotonic() < deadline, "the dead session's lock was not released"
            time.sleep(0.05)
        assert not la.acquire()  # the old holder notices it lost the lock, and cannot take it back
        lb.release()
        assert la.acquire()
        la.release()
    finally:
        a.close()
        b.close()


def test_two_workers_run_a_cycle_once_and_the_survivor_resumes_a_killed_ones(postgres_server, tmp_path):
    """A ``protege worker`` process starts the cycle (an OpenAI fine-tune, on the fake Fine-tuning API,
    that stays unfinished until the test lets it); a second worker on its own connection leaves the policy alone
    while the first lives; SIGKILL the first mid-training and the second adopts its job and finishes
    the cycle: one cycle, one job created at the provider."""
    from protege.settings import Settings
    from tests.fakes.openai_finetune import FakeFineTuneServer
    from tests.fakes.openai_upstream import start_fake_openai

    labels = dict(corpus())
    chat = start_fake_openai(lambda body: teacher_answer(labels.get(body["messages"][-1]["content"], "tech")))
    ft = FakeFineTuneServer(step_seconds=0.2, running_steps=10**6).start()  # trains until the test ends it
    db = postgres_server.database()
    data = tmp_path / "data"  # the workers share the artifacts directory (dataset files)
    store = Store(db, data_dir=data)
    fill(store)
    pfile = tmp_path / "policies.toml"
    pfile.write_text(policy_toml({**POLICY, "student": {"backend": "openai", "base_model": "gpt-4.1-mini-2025-04-14"}}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PROTEGE_UPSTREAM": ft.base_url, "OPENAI_API_KEY": "sk-test-ft"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "protege", "--db", db, "--data-dir", str(data), "worker", "--policies", str(pfile), "--interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(Path(__file__).parent.parent),
    )
    settings = Settings(db=db, upstream=chat.base_url, upstream_api_key="sk-test-upstream")
    other = Worker(store, settings, backend_options={"openai": {"base_url": ft.base_url, "api_key": "sk-test-ft", "poll_interval": 0.01}})
    try:
        started_job_lines(proc)
        pid = store_auto.get_policy(store, "topic").id
        # While the first worker lives, the second leaves its cycle alone (without the lock it would
        # poll the job, and on DuckDB-style resume logic adopt or restart it).
        for _ in range(2):
            assert other.run_once() == []
            assert other.waiting == ["topic: another worker runs this policy's cycle"]
            time.sleep(0.05)
        assert store_auto.last_cycle(store, pid).state == "training"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        ft.running_steps = 1  # the provider finishes the job while nobody watches
        (cycle,) = store_auto.list_cycles(store, pid)
        (job,) = job_rows(store)
        # The survivor takes the policy over once PostgreSQL has ended the dead session.
        run_until(other, lambda: store_auto.last_cycle(store, pid).state in ("promoted", "rejected", "failed"), timeout=60)
        assert [c.id for c in store_auto.list_cycles(store, pid)] == [cycle.id]
        done = store_auto.last_cycle(store, pid)
        assert done.state == "promoted", done.error
        assert [j["id"] for j in job_rows(store)] == [job["id"]]
        creates = [r for r in ft.requests if r["method"] == "POST" and r["path"].endswith("/fine_tuning/jobs")]
        assert len(creates) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        other.stop()
        store.close()
        ft.stop()
        chat.stop()
