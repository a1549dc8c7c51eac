"""End to end: traffic through the real proxy (protege.app.build_app under uvicorn) to a teacher on
127.0.0.1, the policy fires, a local student is trained and gated, then moved through shadow, canary
and full (the response header says who answered), and rolled back when it slips."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from protege.distill.auto.worker import Worker
from protege.distill.auto.rollout import promote, rollback
from protege.distill.auto.policies import parse_policy, save_policy
from protege.store import auto as store_auto
from protege.store import iter_records

from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.auto import TEACHER, corpus, run_until, teacher_answer, topic_policy

FLIP = {"tech": "trivia", "trivia": "coding", "coding": "ai", "ai": "tech"}

POLICY = topic_policy(rollout={"stages": ["shadow", "canary", "full"], "canary_percent": 50, "compare_percent": 100,
                               "agreement_threshold": 0.8, "min_compared": 20, "comparison": "label", "student_timeout": 5})


class Stack:
    """Teacher + proxy (+ the worker over the proxy's own store, as `protege serve --worker` runs it)."""

    def __init__(self, db: str) -> None:
        import uvicorn

        from protege.app import build_app
        from protege.settings import Settings

        self.flip = False
        labels = dict(corpus())

        def reply(body: dict) -> str:
            question = body["messages"][-1]["content"]
            label = labels.get(question, "tech")
            return teacher_answer(FLIP[label] if self.flip else label)

        self.teacher = start_fake_openai(reply)
        self.settings = Settings(db=db, upstream=self.teacher.base_url, flush_interval=0.01)
        self.app, self.store, self.writer = build_app(self.settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, loop="uvloop", http="httptools", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "proxy did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-e2e-client", max_retries=0)
        self.worker = Worker(self.store, self.settings)

    def ask(self, question: str) -> tuple[str, str]:
        raw = self.client.chat.completions.with_raw_response.create(
            model=TEACHER, metadata={"task": "topic"},
            messages=[{"role": "system", "content": "Classify the topic. Answer JSON."}, {"role": "user", "content": question}],
        )
        return raw.headers["x-protege-served-by"], raw.parse().choices[0].message.content

    def settle(self) -> None:
        """Background (shadow/compare) answers are captured after the client's answer: wait for them."""
        time.sleep(0.3)
        assert self.writer.flush(10)

    def records(self) -> list[dict]:
        self.settle()
        return list(iter_records(self.store))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.teacher.stop()


@pytest.fixture
def stack(make_db):
    s = Stack(make_db("e2e"))
    yield s
    s.stop()


def _train_and_promote(stack: Stack) -> str:
    pid = save_policy(stack.store, parse_policy(POLICY)).id
    for question, _label in corpus():
        served, _answer = stack.ask(question)
        assert served == "teacher"
    stack.settle()
    run_until(stack.worker, lambda: (c := store_auto.last_cycle(stack.store, pid)) is not None and c.state in ("promoted", "rejected", "failed"), 60)
    cycle = store_auto.last_cycle(stack.store, pid)
    assert cycle.state == "promoted", cycle.error
    (route,) = store_auto.active_routes(stack.store)
    assert route.stage == "shadow"
    return pid


def _stage(stack: Stack, pid: str) -> str | None:
    routes = store_auto.active_routes(stack.store, pid)
    return routes[0].stage if routes else None


def test_rollout_through_the_proxy(stack: Stack) -> None:
    pid = _train_and_promote(stack)
    qs = [q for q, _ in corpus()]
    labels = dict(corpus())
    # shadow: the teacher answers, the student's answer is captured beside it
    before = len(stack.records())
    for q in qs[:30]:
        served, answer = stack.ask(q)
        assert served == "teacher" and answer == teacher_answer(labels[q])
    new = stack.records()[before:]
    shadows = [r for r in new if r["source"] == "shadow"]
    assert len(shadows) == 30 and all(r["served_by"] == "student" for r in shadows)
    # manual promotion, as from `protege auto promote topic --stage canary`
    promote(stack.store, "topic", "canary")
    served = [stack.ask(q)[0] for q in qs[:60]]
    assert 5 < served.count("student") < 55 and "teacher" in served  # ~50% canary
    stack.settle()  # the stage boundary is a capture seq: let the canary's captures land first
    promote(stack.store, "topic")
    assert _stage(stack, pid) == "full"
    results = [(q, *stack.ask(q)) for q in qs[:60]]
    assert all(s == "student" for _q, s, _a in results)
    correct = sum(a == teacher_answer(labels[q]) for q, _s, a in results)
    assert correct >= 50  # the student answers in the teacher's format, mostly right
    # teacher-served captures since the route went full: none; student-served ones are not training data
    assert store_auto.eligible_count(stack.store, TEACHER, {"task": "topic"}, store_auto.get_route(
        stack.store, store_auto.active_routes(stack.store)[0].id).stage_started_seq) == 0
    rollback(stack.store, "topic")
    assert stack.ask(qs[0])[0] == "teacher"
    kinds = [d.kind for d in store_auto.list_decisions(stack.store, pid)[0]]
    assert kinds == ["manual_rollback", "promote", "promote", "gate"]


def test_automatic_advance_and_rollback_on_online_agreement(stack: Stack) -> None:
    pid = _train_and_promote(stack)
    qs = [q for q, _ in corpus()]
    for q in qs[:40]:
        stack.ask(q)
    recs = stack.records()
    # the proxy pairs each shadow capture with the capture the client got: online agreement needs it
    assert any(r["source"] == "shadow" and r["paired_with"] for r in recs), "no shadow capture is paired with its teacher answer"
    # shadow -> canary on agreement
    actions = stack.worker.run_once()
    assert _stage(stack, pid) == "canary", actions
    for q in qs[40:140]:
        stack.ask(q)
    stack.settle()
    actions = stack.worker.run_once()
    # canary -> full needs compared answers: the proxy sends compare_percent of student answers to the teacher
    assert _stage(stack, pid) == "full", actions
    assert all(stack.ask(q)[0] == "student" for q in qs[:10])
    # the teacher changes its answers: the student now disagrees, and is rolled back on its own
    stack.flip = True
    for q in qs[140:200]:
        stack.ask(q)
    stack.settle()
    actions = stack.worker.run_once()
    assert _stage(stack, pid) is None, actions
    assert any("rolled back" in a for a in actions)
    assert stack.ask(qs[0])[0] == "teacher"
    (last, *_), _ = store_auto.list_decisions(stack.store, pid)
    d = store_auto.as_dict(last)
    assert d["kind"] == "rollback" and d["details"]["agreement"] < 0.8 and d["details"]["compared"] >= 20
