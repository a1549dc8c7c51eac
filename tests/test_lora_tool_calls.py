"""A LoRA student trained on tool-call traffic answers through the proxy with OpenAI ``tool_calls``.

End to end on real parts: a tiny chat model whose template renders tools (tests/fixtures/tool_models.py)
is LoRA-tuned by a real job process on three examples (two tool calls, one plain answer) until it
reproduces them; the proxy serves the student in-process and the openai SDK, with ``tools`` in the
request, reads the calls back as ``message.tool_calls`` (function name, JSON arguments) with
``finish_reason == "tool_calls"``, streamed and not, and the plain answer as content.
"""

from __future__ import annotations

import json

import openai
import pytest

from protege.distill.finetune import jobs
from protege.settings import Settings
from protege.store import Store
from protege.store import jobs as store_jobs
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.jsonl import write_jsonl
from tests.fixtures.tool_models import WEATHER_TOOLS, build_tiny_tools_model, tool_call_example
from tests.servers import AppServer

pytest.importorskip("trl")

CALLS = [("Weather in Paris?", "get_weather", {"city": "Paris"}), ("What time is it in Tokyo?", "get_time", {"zone": "Asia/Tokyo"})]
PLAIN = ("Hello", "Hi there")
# Enough for the tiny model to reproduce all three answers exactly (token accuracy 1.0 from ~45 steps).
HP = {"max_steps": 60, "batch_size": 3, "learning_rate": 0.02, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "save_steps": 1000, "logging_steps": 10}


# On DuckDB only (a module-scoped store, shared by the tests below: the backend parameter is per test); the store part (a job, its student, serving) runs on PostgreSQL in test_lora_backend.py and test_lora_serving.py.
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-tools")
    base = build_tiny_tools_model(root / "base")
    rows = [tool_call_example(q, name, args) for q, name, args in CALLS]
    rows.append({"messages": [{"role": "user", "content": PLAIN[0]}, {"role": "assistant", "content": PLAIN[1]}], "tools": WEATHER_TOOLS})
    train = write_jsonl(root / "train.jsonl", rows)
    store = Store(str(root / "s.duckdb"), data_dir=root / "s-data")
    job = jobs.start_job(store, backend="lora", model=str(base), training_file=train, name="tooly", hyperparameters=HP)
    job = jobs.wait_job(store, job["id"], interval=0.2, timeout=600)
    assert job["status"] == "succeeded", job["error"]
    teacher = start_fake_openai()
    settings = Settings(db=store.path, data_dir=str(store.data_dir), upstream=teacher.base_url, upstream_api_key="sk-teacher")
    srv = AppServer(settings, store=store)
    client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
    yield srv, client, teacher, job
    srv.stop()
    teacher.stop()


def _ask(client, question: str, **kw):
    return client.chat.completions.create(
        model="protege/tooly", messages=[{"role": "user", "content": question}], tools=WEATHER_TOOLS, temperature=0, max_tokens=40, **kw
    )


def test_the_student_is_recorded_as_trained_with_tools(served):
    srv, _client, _teacher, job = served
    row = store_jobs.get_student(srv.store, "tooly")
    assert row["manifest"]["tools"] is True and row["manifest"]["dataset"]["tool_examples"] == 3  # rows that carry tools
    assert job["fine_tuned_model"] == "protege/tooly@v1"


def test_tool_calls_come_back_as_openai_tool_calls(served):
    srv, client, teacher, _job = served
    for question, name, args in CALLS:
        out = _ask(client, question)
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == name and json.loads(call.function.arguments) == args
    # A plain answer from the same student stays content.
    out = _ask(client, PLAIN[0])
    assert out.choices[0].message.content == PLAIN[1] and out.choices[0].message.tool_calls is None
    assert out.choices[0].finish_reason == "stop"
    assert teacher.chat_requests == []
    recs = [r for r in srv.records() if r["model_requested"] == "protege/tooly"]
    assert len(recs) == 3 and all(r["served_by"] == "student" and r["status_code"] == 200 for r in recs)


def test_streamed_tool_calls(served):
    _srv, client, _teacher, _job = served
    for question, name, args in CALLS:
        chunks = list(_ask(client, question, stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        calls = [tc for d in deltas for tc in (d.tool_calls or [])]
        assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
        assert calls[0].function.name == name and json.loads(calls[0].function.arguments) == args
        assert "".join(d.content or "" for d in deltas) == ""  # the call's text is not streamed as content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
