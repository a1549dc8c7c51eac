"""Several ``protege serve`` replicas on one real PostgreSQL database, the openai SDK as the client and
the fake OpenAI upstream behind them (tests/fakes/):

- a route promoted through one replica's API is honoured by the others within the route table's
  re-check bound (``routing.REFRESH_SECONDS``), and rolled back through the CLI, which talks to
  PostgreSQL directly (a URL store has no ``.serve.json``: the database has many writers);
- three replicas, clients spread round-robin over them, SIGTERM to one mid-load: every answer
  received is stored exactly once (by id), rows stored == answers received, and the Stored API of
  any replica sees what any other captured.

The replicas start once for the module (a process start is the expensive part).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from protege.distill.auto.policies import parse_policy, save_policy
from protege.distill.auto.routing import REFRESH_SECONDS
from protege.store import Store
from protege.store import auto as store_auto
from tests import postgres
from tests.fixtures.auto import POLICY, TEACHER
from tests.fixtures.http import free_port, wait_healthy
from tests.fixtures.terminal import run_protege

pytestmark = pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")

ROOT = Path(__file__).resolve().parent.parent
STUDENT = "gpt-student"  # a cloud student: the fake upstream answers as it, "gpt-student-2024-07-18"
# How late a replica may serve another replica's route change: the re-check interval, one query and
# one request's round trip, with room for a loaded 2-core CI machine.
BOUND = REFRESH_SECONDS + 3.0
SECRET = "s3cret-replica-pw"


class Replica:
    """One ``protege --db URL serve`` process with its own data (spool) directory."""

    def __init__(self, db: str, upstream: str, data: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ)
        env.pop("OPENAI_API_KEY", None)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "protege", "--db", db, "--data-dir", str(data), "serve", "--port", str(self.port),
                 "--upstream", upstream],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
            )
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="sk-replica-client", max_retries=0, timeout=20)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_healthy(self.url, self.proc, self.log, timeout)

    def ask(self, content: str, **extra) -> tuple[str, str]:
        """(completion id, model that answered) of one chat completion through this replica."""
        r = self.client.chat.completions.create(model=TEACHER, messages=[{"role": "user", "content": content}], store=True, **extra)
        return r.id, r.model

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def cluster(postgres_server, tmp_path_factory):
    from tests.fakes.openai_upstream import start_fake_openai

    root = tmp_path_factory.mktemp("replicas")
    db = postgres_server.database()
    store = Store(db, data_dir=root / "setup")  # the schema, a policy and its trained student, before the replicas start
    policy = {**POLICY, "student": {"backend": "openai", "base_model": "gpt-4.1-mini-2025-04-14"}}
    pid = save_policy(store, parse_policy(policy)).id
    cycle = store_auto.create_cycle(store, pid, until_seq=0)
    store_auto.update_cycle(store, cycle.id, student_model=STUDENT, state="promoted")
    store.close()
    upstream = start_fake_openai(delay=0.02)
    # Replica 0 is given a password in its URL (trust authentication ignores it): it must never be logged.
    urls = [db.replace("://protege@", f"://protege:{SECRET}@"), db, db]
    replicas = [Replica(url, upstream.base_url, root / f"r{i}", root / f"r{i}.log") for i, url in enumerate(urls)]
    try:
        for r in replicas:
            r.wait_ready()
        yield db, replicas, root
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait(10)
        upstream.stop()


def _until(check, timeout: float) -> float:
    """Seconds until ``check()`` is true (fails after ``timeout``)."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"not within {timeout:.1f}s"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_a_route_change_through_one_replica_reaches_the_others_within_the_bound(cluster):
    db, (a, b, c), root = cluster
    topic = {"metadata": {"task": "topic"}}
    assert a.ask("before", **topic)[1] == b.ask("before", **topic)[1] == f"{TEACHER}-2024-07-18"

    # Promote through replica a's API: a serves the student at once (its own change), b and c
    # within the bound, without a request being needed to notice it.
    resp = httpx.post(a.url + "/protege/v1/policies/topic/promote", json={"stage": "full"}, timeout=20)
    assert resp.status_code == 200, resp.text
    t0 = time.monotonic()
    assert a.ask("at once", **topic)[1] == f"{STUDENT}-2024-07-18"
    for r in (b, c):
        waited = _until(lambda: r.ask("promoted?", **topic)[1] == f"{STUDENT}-2024-07-18", BOUND)
        assert waited <= BOUND
    assert b.ask("other traffic")[1] == f"{TEACHER}-2024-07-18"  # the route matches task=topic only
    print(f"promote through one replica: the others served it {time.monotonic() - t0:.2f}s later")

    # Roll back through the CLI: it opens PostgreSQL itself (no server record for a URL store).
    code, out, err = run_protege(["--db", db, "auto", "rollback", "topic"], tty=False, timeout=120)
    assert code == 0, err
    assert "rolled back gpt-student" in out
    for r in (a, b, c):
        _until(lambda: r.ask("rolled back?", **topic)[1] == f"{TEACHER}-2024-07-18", BOUND)
    assert not list(root.rglob("*.serve.json")) and not list(ROOT.glob("*.serve.json"))


def test_three_replicas_sigterm_one_mid_load_every_answer_stored_once(cluster):
    db, replicas, _root = cluster
    tag = {"run": f"load-{time.time_ns()}"}
    answered: list[tuple[int, str]] = []  # (replica index, completion id)
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        i = n
        while not stop.is_set():
            k = i % 3  # round-robin over the replicas, no balancer
            i += 1
            try:
                cid, _model = replicas[k].ask(f"c{n} r{i}", metadata=tag)
            except (openai.APIConnectionError, openai.APIStatusError):
                continue  # the stopped replica refuses; the next request goes to the next replica
            with lock:
                answered.append((k, cid))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    victim = replicas[2]
    victim.proc.send_signal(signal.SIGTERM)
    assert victim.stop() in (0, -signal.SIGTERM), victim.log.read_text()[-3000:]
    time.sleep(1.0)  # the other two keep answering
    stop.set()
    for t in threads:
        t.join(30)
    ids = [cid for _k, cid in answered]
    assert len(set(ids)) == len(ids)  # no id handed out twice
    assert {k for k, _ in answered} == {0, 1, 2} and len(ids) > 30, len(ids)

    # The Stored API of a live replica sees every answer, whichever replica captured it (the killed one too).
    a, b = replicas[0], replicas[1]
    cid, _model = a.ask("read your writes", metadata=tag)
    assert a.client.chat.completions.retrieve(cid).id == cid  # the answering replica: at once
    ids.append(cid)

    def listed(r: Replica) -> set[str]:
        return {c.id for c in r.client.chat.completions.list(metadata=tag, limit=100)}

    _until(lambda: listed(a) == set(ids), 15)
    assert listed(b) == set(ids)
    for k in (0, 1, 2):
        cid = next(cid for j, cid in answered if j == k)
        assert a.client.chat.completions.retrieve(cid).id == cid and b.client.chat.completions.retrieve(cid).id == cid

    # Rows stored == answers received, each exactly once, once the live replicas have drained.
    for r in (a, b):
        assert r.stop() in (0, -signal.SIGTERM), r.log.read_text()[-3000:]
    store = Store(db, data_dir=_root / "check", read_only=True)
    try:
        rows = store.cursor().execute(
            "SELECT id, count(*) FROM completions WHERE metadata->>'run' = ? GROUP BY id", [tag["run"]]
        ).fetchall()
    finally:
        store.close()
    assert sorted(r[0] for r in rows) == sorted(ids)
    logs = [r.log.read_text() for r in replicas]
    assert "protege listening on" in logs[0] and "protege:***@" in logs[0]
    assert not any(SECRET in text for text in logs)
    assert all(n == 1 for _id, n in rows)
    print(f"three replicas, one SIGTERMed mid-load: {len(ids)} answers, {len(rows)} rows "
          f"({sum(1 for k, _ in answered if k == 2)} through the stopped replica)")
