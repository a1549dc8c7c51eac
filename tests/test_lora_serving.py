"""LoRA students served in-process through the real proxy, answered with the openai SDK.

A tiny random chat model with a PEFT adapter (get_peft_model, saved, no training) in the shared
artifact layout stands in for a trained student: the serving path is the real one.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from protege.distill.finetune.chat import build_completion, parse_tool_calls
from protege.distill.finetune.generation import Choice, GenResult
from protege.settings import Settings
from protege.store import Store
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.lora_students import make_lora_student
from tests.servers import AppServer

PROMPTS = ["The pizza was great.", "The service was terrible.", "Hello, how can I help", "Summarise the following text",
           '{"name": "Ada"}', "user assistant", "positive negative", "x"]


# On DuckDB only (a module-scoped store, shared by the tests below: the backend parameter is per test); a student served from a PostgreSQL registry: test_a_student_in_a_postgresql_registry_answers_and_is_captured.
@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_chat_model):
    root = tmp_path_factory.mktemp("lora-serve")
    teacher = start_fake_openai()
    store = Store(str(root / "s.duckdb"), data_dir=root / "s-data")
    make_lora_student(store, tiny_chat_model, "tiny", nudge=8.0)               # v1: base + adapter
    make_lora_student(store, tiny_chat_model, "tiny", nudge=8.0, merged=True)  # v2: merged model
    settings = Settings(db=store.path, data_dir=str(store.data_dir), upstream=teacher.base_url, upstream_api_key="sk-teacher")
    srv = AppServer(settings, store=store)
    client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
    yield srv, client, teacher
    srv.stop()
    teacher.stop()


def _ask(client, prompt, model="protege/tiny@v1", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=10, **kw)


def test_concurrent_requests_are_batched_with_identical_greedy_outputs(served):
    srv, client, teacher = served
    alone = [_ask(client, p).choices[0].message.content for p in PROMPTS]
    assert len(set(alone)) > 4  # the adapter makes answers depend on the prompt
    gen = srv.registry._models[("tiny", 1)].generator
    before = gen.batches
    barrier = threading.Barrier(len(PROMPTS))

    def together(p):
        barrier.wait()
        return _ask(client, p).choices[0].message.content

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        batched = list(pool.map(together, PROMPTS))
    assert batched == alone
    assert gen.batches - before < len(PROMPTS)  # fewer generate calls than requests
    assert teacher.chat_requests == []


def test_streamed_and_not_same_answer_usage_from_the_tokenizer(served):
    srv, client, _ = served
    out = _ask(client, PROMPTS[0], model="protege/tiny@v2")
    assert out.model == "protege/tiny@v2" and out.object == "chat.completion" and out.choices[0].finish_reason == "length"
    tok = srv.registry._models[("tiny", 2)].tokenizer
    rendered = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True, tokenize=False)
    assert out.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert out.usage.completion_tokens == 10 and out.usage.total_tokens == out.usage.prompt_tokens + 10
    chunks = list(_ask(client, PROMPTS[0], model="protege/tiny@v2", stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == out.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(_ask(client, PROMPTS[0], model="protege/tiny@v2", stream=True))
    assert all(c.choices for c in plain) and "".join(c.choices[0].delta.content or "" for c in plain) == out.choices[0].message.content
    recs = [r for r in srv.records() if r["model_requested"] == "protege/tiny@v2"]
    assert recs and all(r["served_by"] == "student" and r["status_code"] == 200 for r in recs)
    streamed = [r for r in recs if r["stream"]]
    assert streamed and all(r["completion_tokens"] == 10 for r in streamed)  # captured with usage


def test_max_tokens_stop_and_n(served):
    _srv, client, _ = served
    full = _ask(client, PROMPTS[1]).choices[0].message.content
    three = client.chat.completions.create(
        model="protege/tiny@v1", messages=[{"role": "user", "content": PROMPTS[1]}], temperature=0, max_completion_tokens=3)
    assert three.usage.completion_tokens == 3 and three.choices[0].finish_reason == "length" and full.startswith(three.choices[0].message.content)
    stop = full[3:5]
    cut = full[: full.index(stop)]
    out = _ask(client, PROMPTS[1], stop=[stop])
    assert out.choices[0].message.content == cut and out.choices[0].finish_reason == "stop"
    chunks = list(_ask(client, PROMPTS[1], stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut
    two = _ask(client, PROMPTS[1], n=2)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].message.content == two.choices[1].message.content == full
    sampled = [
        client.chat.completions.create(model="protege/tiny@v1", messages=[{"role": "user", "content": PROMPTS[1]}], temperature=1.0, seed=7, max_tokens=8).choices[0].message.content
        for _ in range(2)]
    assert sampled[0] == sampled[1]  # a seed decides the sampled tokens
    for bad in ({"n": 20}, {"temperature": 5}, {"stop": 3}, {"max_tokens": 0}, {"logprobs": True}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="protege/tiny@v1", messages=[{"role": "user", "content": "x"}], **bad)
        assert err.value.body["param"] in bad


def test_unknown_students_are_404_not_the_teacher(served):
    _srv, client, teacher = served
    for model in ("protege/nobody", "protege/tiny@v7"):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert err.value.code == "model_not_found" and model in err.value.message
        with pytest.raises(openai.NotFoundError):
            list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert teacher.chat_requests == []


def test_models_list_merges_students_and_teacher(served):
    _srv, client, _ = served
    ids = [m.id for m in client.models.list()]
    assert {"gpt-4o-mini", "protege/tiny", "protege/tiny@v1", "protege/tiny@v2"} <= set(ids)
    assert client.models.retrieve("protege/tiny@v1").owned_by == "protege"


def test_tampered_adapter_is_refused(served, tiny_chat_model):
    srv, client, _ = served
    row = make_lora_student(srv.store, tiny_chat_model, "tiny", nudge=8.0)
    adapter = Path(srv.store.data_dir) / "students" / "tiny" / f"v{row['version']}" / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-8] + b"tampered")
    with pytest.raises(openai.InternalServerError) as err:
        _ask(client, "hi", model=f"protege/tiny@v{row['version']}")
    assert err.value.code == "artifact_tampered"


def test_timeout_is_an_openai_error(tmp_path, tiny_chat_model):
    store = Store(str(tmp_path / "t.duckdb"), data_dir=tmp_path / "t-data")
    make_lora_student(store, tiny_chat_model, "slow", nudge=8.0)
    settings = Settings(db=store.path, data_dir=str(store.data_dir), upstream="http://127.0.0.1:9/v1", upstream_api_key="sk-x", student_timeout=0.0005)
    srv = AppServer(settings, store=store)
    try:
        srv.registry.preload("protege/slow")
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="protege/slow", messages=[{"role": "user", "content": "hi " * 50}], max_tokens=200)
        assert err.value.status_code == 504 and err.value.code == "timeout"
        assert client.models.list()  # still serving
    finally:
        srv.stop()


def test_tool_calls_are_parsed_into_openai_shape():
    content, calls = parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert content is None and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}
    content, calls = parse_tool_calls('Sure. <tool_call>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]</tool_call>')
    assert content == "Sure." and [c["function"]["name"] for c in calls] == ["a", "b"]
    assert parse_tool_calls('{"name": "lookup", "arguments": {"q": "x"}}')[1][0]["function"]["name"] == "lookup"
    assert parse_tool_calls("plain answer {not json}") == ("plain answer {not json}", [])
    done = build_completion("protege/t@v1", GenResult([Choice(0, '<tool_call>{"name": "f", "arguments": {}}</tool_call>', "stop", 9)], 5), tools=True, fingerprint="fp")
    assert done["choices"][0]["finish_reason"] == "tool_calls" and done["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "f"


def test_a_students_answer_carries_its_capture_id_streamed_and_not(served):
    """The id the client is answered with is the capture's id: retrieve finds exactly that answer."""
    srv, client, _ = served
    out = _ask(client, PROMPTS[1])
    chunks = list(_ask(client, PROMPTS[2], stream=True))
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    srv.records()  # the writer has passed both captures
    assert client.chat.completions.retrieve(out.id).id == out.id
    streamed = client.chat.completions.retrieve(ids.pop())
    assert streamed.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# DuckDB: the module's `served` fixture (its student registry and captures are in a DuckDB file).
@pytest.mark.backends("postgresql")
def test_a_student_in_a_postgresql_registry_answers_and_is_captured(make_db, tmp_path, tiny_chat_model):
    """The student registry and the captures on PostgreSQL: a recorded student is served by name
    and version, its answer is the one its capture id retrieves, and its versions are listed."""
    store = Store(make_db("s"), data_dir=tmp_path / "s-data")
    make_lora_student(store, tiny_chat_model, "tiny", nudge=8.0)
    make_lora_student(store, tiny_chat_model, "tiny", nudge=8.0, merged=True)
    teacher = start_fake_openai()
    settings = Settings(db=store.path, data_dir=str(store.data_dir), upstream=teacher.base_url, upstream_api_key="sk-teacher")
    srv = AppServer(settings, store=store)
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
        out = _ask(client, PROMPTS[0], model="protege/tiny@v2")
        assert out.model == "protege/tiny@v2" and out.choices[0].message.content
        assert not teacher.chat_requests  # the student answered, not the teacher
        srv.records()  # the writer has passed the capture
        assert client.chat.completions.retrieve(out.id).choices[0].message.content == out.choices[0].message.content
        models = {m.id for m in client.models.list()}
        assert {"protege/tiny@v1", "protege/tiny@v2"} <= models
    finally:
        srv.stop()
        teacher.stop()
