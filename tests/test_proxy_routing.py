"""Hooks: local models answer in-process; a Router sends traffic to a student (canary/full/shadow)."""

from __future__ import annotations

import json
import time

import openai

from protege.proxy import Route

KEY = "sk-routing-test"
MSG = [{"role": "user", "content": "route me"}]


class Locals:
    def __init__(self, fail: bool = False, sleep: float = 0.0) -> None:
        self.fail, self.sleep, self.calls = fail, sleep, 0

    def has(self, model: str) -> bool:
        return model.startswith("protege/")

    def complete(self, body: dict) -> dict:
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail:
            raise RuntimeError("student broke")
        return {
            "id": f"chatcmpl-local{self.calls}", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "student says hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        }


class FixedRouter:
    def __init__(self, route: Route | None) -> None:
        self._route = route

    def route(self, model, metadata):
        return self._route if model == "gpt-4o" else None


def test_local_model_non_stream_and_stream(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url, local_models=Locals())
    c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="protege/tiny", messages=MSG)
    assert raw.parse().choices[0].message.content == "student says hi"
    assert raw.headers["x-protege-served-by"] == "student"
    with c.chat.completions.stream(model="protege/tiny", messages=MSG, stream_options={"include_usage": True}) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == "student says hi" and final.usage.total_tokens == 5
    assert fake_openai.chat_requests == []
    recs = proxy.records()
    assert [r["upstream"] for r in recs] == ["local", "local"] and all(r["outcome"] == "ok" for r in recs)
    assert recs[1]["stream"] is True and json.loads(recs[1]["response"])["choices"][0]["message"]["content"] == "student says hi"


def test_full_rollout_to_local_student_and_fallback(fake_openai, run_proxy):
    route = Route(route_id="r1", student_model="protege/s1", stage="full", percent=100, timeout=0.5)
    proxy = run_proxy(upstream=fake_openai.base_url, local_models=Locals(), router=FixedRouter(route))
    c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    assert raw.headers["x-protege-served-by"] == "student" and raw.parse().choices[0].message.content == "student says hi"
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)  # no route
    assert raw.headers["x-protege-served-by"] == "teacher"
    assert [r["served_by"] for r in proxy.records()] == ["student", "teacher"]
    # a failing or slow student: the teacher answers
    for locals_ in (Locals(fail=True), Locals(sleep=1.0)):
        p = run_proxy(upstream=fake_openai.base_url, local_models=locals_, router=FixedRouter(route))
        c = openai.OpenAI(base_url=p.base_url, api_key=KEY, max_retries=0)
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
        assert raw.headers["x-protege-served-by"] == "teacher" and raw.parse().choices[0].message.content == "route me"
        (rec,) = p.records()
        assert rec["served_by"] == "teacher" and rec["outcome"] == "ok"


def test_canary_share_and_upstream_student(fake_openai, run_proxy):
    route = Route(route_id="r2", student_model="ft:gpt-4o-mini:student", stage="canary", percent=50, timeout=5)
    proxy = run_proxy(upstream=fake_openai.base_url, router=FixedRouter(route))
    c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    served = [c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG).headers["x-protege-served-by"] for _ in range(40)]
    assert 5 < served.count("student") < 35
    models = [r["json"]["model"] for r in fake_openai.chat_requests]
    assert models.count("ft:gpt-4o-mini:student") == served.count("student")
    recs = proxy.records()
    assert [r["served_by"] for r in recs] == served


def test_shadow_runs_student_after_teacher(fake_openai, run_proxy):
    route = Route(route_id="r3", student_model="protege/s3", stage="shadow", percent=100, timeout=5)
    proxy = run_proxy(upstream=fake_openai.base_url, local_models=Locals(), router=FixedRouter(route))
    c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG, metadata={"app": "x"})
    assert raw.headers["x-protege-served-by"] == "teacher" and raw.parse().choices[0].message.content == "route me"
    time.sleep(0.3)
    recs = proxy.records()
    assert len(recs) == 2
    teacher = next(r for r in recs if r["source"] == "proxy")
    shadow = next(r for r in recs if r["source"] == "shadow")
    assert teacher["served_by"] == "teacher" and teacher["id"] == raw.parse().id
    assert shadow["paired_with"] == teacher["id"]
    assert shadow["served_by"] == "student" and shadow["model_requested"] == "protege/s3" and shadow["upstream"] == "local"
    assert json.loads(shadow["metadata"]) == {"app": "x", "served_by": "student"}
    assert json.loads(shadow["response"])["choices"][0]["message"]["content"] == "student says hi"


def test_compare_percent_sends_student_served_requests_to_the_teacher(fake_openai, run_proxy):
    from dataclasses import dataclass

    @dataclass
    class CompareRoute(Route):
        compare_percent: float = 100.0

    route = CompareRoute(route_id="r4", student_model="protege/s4", stage="full", percent=100, timeout=5)
    proxy = run_proxy(upstream=fake_openai.base_url, local_models=Locals(), router=FixedRouter(route))
    c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    assert raw.headers["x-protege-served-by"] == "student"
    time.sleep(0.3)
    recs = proxy.records()
    student = next(r for r in recs if r["source"] == "proxy")
    teacher = next(r for r in recs if r["source"] == "shadow")
    assert student["served_by"] == "student" and student["id"] == raw.parse().id
    assert teacher["served_by"] == "teacher" and teacher["paired_with"] == student["id"]
    assert json.loads(teacher["response"])["choices"][0]["message"]["content"] == "route me"
    assert fake_openai.chat_requests[-1]["json"]["model"] == "gpt-4o"
