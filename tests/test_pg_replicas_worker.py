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


def test_a_locked_out_worker_tries_every_policy_over_one_connection(postgres_server, tmp_path):
    """N policies whose cycles another worker holds, several passes of a worker locked out of all of
    them: the database sees one lock connection per worker (pg_stat_activity, by its
    application_name) and no new session per policy per pass (pg_stat_database.sessions counts every
    session ever started), where a connection per locked policy per pass exhausted max_connections."""
    from protege.distill.auto.policies import parse_policy
    from protege.settings import Settings

    db = postgres_server.database()
    store, other = Store(db, data_dir=tmp_path / "a"), Store(db, data_dir=tmp_path / "b")
    n, passes = 12, 4
    ids = [store_auto.put_policy(store, f"p{i}", parse_policy({**POLICY, "name": f"p{i}"}).to_dict()).id for i in range(n)]
    holder = store_auto.PolicyLocks(other)  # the other worker, running every policy's cycle
    assert all(holder.acquire(pid) for pid in ids)
    worker = Worker(store, Settings(db=db))
    cur = store.cursor()

    def sessions() -> int:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        return int(cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()[0])

    def lock_connections() -> int:
        return int(cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND application_name = ?", [store_auto.LOCK_APPLICATION_NAME]).fetchone()[0])

    try:
        assert worker.run_once() == []  # the first pass opens what the worker keeps (its store's, its locks')
        time.sleep(0.5)  # sessions that ended are counted as their backends exit
        before = sessions()
        for _ in range(passes):
            assert worker.run_once() == []
            assert len([w for w in worker.waiting if "another worker runs this policy's cycle" in w]) == n
        time.sleep(0.5)
        assert sessions() - before <= 1, "new sessions while locked out"  # was n * passes
        assert lock_connections() == 2  # the holder's and this worker's, one each
        # The other worker's policies stay its own until it lets one go; then this worker runs it.
        holder.release(ids[0])
        worker.run_once()
        assert len([w for w in worker.waiting if "another worker runs this policy's cycle" in w]) == n - 1
        holder.release_all()
        worker.release_locks()
        deadline = time.monotonic() + 10
        while lock_connections():  # closed: their backends exit (asynchronously) with them
            assert time.monotonic() < deadline, "the lock connections stayed open"
            time.sleep(0.05)
    finally:
        worker.release_locks()
        holder.release_all()
        store.close()
        other.close()
