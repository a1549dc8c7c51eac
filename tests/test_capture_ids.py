"""One capture, one id: an upstream that repeats its completion id (Ollama, llama.cpp, "0") still gives
every captured answer an id of its own, the same in the JSON body and in every SSE chunk, and the
Stored API, feedback and datasets act on exactly the capture that id names."""

from __future__ import annotations

import time

import httpx2 as httpx
import openai
import orjson
import pytest

from protege.proxy import Route
from protege.store.feedback import add_feedback
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.http import Served

KEY = "sk-ids-test"
REPEATED = "chatcmpl-123"
REVIEWS = ["the pizza was great", "the pizza was terrible", "the pizza was fine"]


def messages(review: str) -> list[dict]:
    return [{"role": "system", "content": "Answer positive or negative."}, {"role": "user", "content": review}]


@pytest.fixture
def repeating():
    fake = start_fake_openai(lambda body: "positive", completion_id=REPEATED)
    yield fake
    fake.stop()


@pytest.fixture
def captured(repeating, run_proxy):
    """Three answers from an upstream that says chatcmpl-123 every time."""
    proxy = run_proxy(upstream=repeating.base_url)
    c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    ids = [c.chat.completions.create(model="gpt-4o", messages=messages(r), store=True).id for r in REVIEWS]
    proxy.records()
    return proxy, c, ids


def test_repeated_upstream_ids_become_distinct_ids_the_client_sees(captured):
    proxy, _c, ids = captured
    assert len(set(ids)) == 3 and REPEATED not in ids
    assert all(i.startswith("chatcmpl-") and len(i) == len("chatcmpl-") + 29 for i in ids)
    recs = proxy.records()
    assert [r["id"] for r in recs] == ids
    assert [r["upstream_id"] for r in recs] == [REPEATED] * 3
    assert [orjson.loads(r["response"])["id"] for r in recs] == ids  # the stored answer is the one the client got


def test_every_chunk_of_a_stream_carries_the_minted_id(repeating, run_proxy):
    proxy = run_proxy(upstream=repeating.base_url)
    c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    streams = []
    for review in REVIEWS:
        chunks = list(c.chat.completions.create(model="gpt-4o", messages=messages(review), stream=True))
        assert len(chunks) >= 3
        streams.append({ch.id for ch in chunks})
    assert all(len(s) == 1 for s in streams)  # one id per stream, in every chunk
    ids = [next(iter(s)) for s in streams]
    assert len(set(ids)) == 3 and REPEATED not in ids
    # the usage chunk Protege injected is still filtered out; with include_usage the client gets it, rewritten
    chunks = list(c.chat.completions.create(model="gpt-4o", messages=messages("x"), stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and len({ch.id for ch in chunks}) == 1 and chunks[0].id != REPEATED
    recs = proxy.records()
    assert [r["id"] for r in recs] == ids + [chunks[0].id]
    assert {r["upstream_id"] for r in recs} == {REPEATED}
    assert [orjson.loads(r["response"])["id"] for r in recs[:3]] == ids


def test_stored_api_acts_on_exactly_one_capture(captured):
    proxy, c, ids = captured
    for review, cid in zip(REVIEWS, ids):
        got = c.chat.completions.retrieve(cid)
        assert got.id == cid
        assert [m.content for m in c.chat.completions.messages.list(cid)][-1] == review
    assert c.chat.completions.update(ids[1], metadata={"reviewed": "yes"}).metadata == {"reviewed": "yes"}
    assert [c.chat.completions.retrieve(i).metadata for i in ids] == [{}, {"reviewed": "yes"}, {}]
    # auto-pagination one page at a time sees all three, in order
    assert [x.id for x in c.chat.completions.list(limit=1)] == ids
    assert [x.id for x in c.chat.completions.list(limit=1, order="desc")] == ids[::-1]
    assert c.chat.completions.delete(ids[0]).deleted is True
    assert [x.id for x in c.chat.completions.list()] == ids[1:]
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.retrieve(ids[0])
    assert len(proxy.records()) == 2


def test_feedback_correction_reaches_only_its_completion_in_the_dataset(captured):
    from protege.distill import DatasetOptions, build_dataset

    proxy, _c, ids = captured
    assert add_feedback(proxy.store, ids[1], correction="negative")["completion_id"] == ids[1]
    dv = build_dataset(proxy.store, DatasetOptions(name="reviews", validation_fraction=0))
    lines = [orjson.loads(line) for line in open(dv.train_path, "rb")]
    answers = {e["messages"][-2]["content"]: e["messages"][-1]["content"] for e in lines}
    assert answers == {"the pizza was great": "positive", "the pizza was terrible": "negative", "the pizza was fine": "positive"}


def test_sorted_keys_upstream_keeps_tool_call_ids(run_proxy):
    """llama.cpp and Azure write `choices` before `id`: only the top-level id changes."""
    call = {"id": REPEATED, "type": "function", "function": {"name": "lookup", "arguments": '{"q": "pizza"}'}}
    fake = start_fake_openai(lambda body: {"content": None, "tool_calls": [call]}, completion_id=REPEATED, sort_keys=True)
    try:
        proxy = run_proxy(upstream=fake.base_url)
        c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
        raw = httpx.post(proxy.base_url + "/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                         json={"model": "gpt-4o", "messages": messages("x")})
        body = raw.json()
        assert body["id"] != REPEATED and body["choices"][0]["message"]["tool_calls"][0]["id"] == REPEATED
        assert raw.content.index(b'"choices"') < raw.content.index(b'"id":"chatcmpl-')  # bytes kept, not re-encoded
        assert int(raw.headers["content-length"]) == len(raw.content)
        chunks = list(c.chat.completions.create(model="gpt-4o", messages=messages("x"), stream=True))
        assert len({ch.id for ch in chunks}) == 1 and chunks[0].id not in (REPEATED, body["id"])
        recs = proxy.records()
        assert [r["id"] for r in recs] == [body["id"], chunks[0].id]
        assert [r["upstream_id"] for r in recs] == [REPEATED, REPEATED]
    finally:
        fake.stop()


class _Locals:
    """A local model that, like many, repeats its ids."""

    def has(self, model: str) -> bool:
        return model.startswith("protege/")

    def complete(self, body: dict) -> dict:
        return {
            "id": "0", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "student says hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        }


class _Shadow:
    def route(self, model, metadata):
        return Route(route_id="r", student_model="protege/s", stage="shadow", percent=100, timeout=5)


def test_local_students_and_shadow_pairs_use_minted_ids(repeating, run_proxy):
    proxy = run_proxy(upstream=repeating.base_url, local_models=_Locals(), router=_Shadow())
    c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    local = [c.chat.completions.create(model="protege/s", messages=messages("x")).id for _ in range(2)]
    streamed = list(c.chat.completions.create(model="protege/s", messages=messages("x"), stream=True))
    assert len(set(local)) == 2 and "0" not in local and {ch.id for ch in streamed} - set(local) == {streamed[0].id}
    assert len({ch.id for ch in streamed}) == 1
    teacher = [c.chat.completions.create(model="gpt-4o", messages=messages(r)).id for r in REVIEWS[:2]]
    deadline = time.monotonic() + 10
    while len(proxy.records()) < 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    recs = proxy.records()
    by_id = {r["id"]: r for r in recs}
    assert len(by_id) == len(recs) == 7
    assert [by_id[i]["upstream_id"] for i in local + [streamed[0].id]] == ["0", "0", "0"]
    shadows = [r for r in recs if r["source"] == "shadow"]
    assert sorted(s["paired_with"] for s in shadows) == sorted(teacher)
    assert all(s["upstream_id"] == "0" and s["id"] not in teacher for s in shadows)


def test_stream_rewriter_handles_pairs_split_across_reads_and_odd_ids():
    from protege.proxy.ids import StreamIdRewriter, rewrite_body

    stream = b"".join(
        b'data: {"id": "0", "object":"chat.completion.chunk","choices":[{"delta":{"content":"w%d"}}]}\n\n' % i for i in range(3)
    ) + b"data: [DONE]\n\n"
    for size in (1, 3, 7, len(stream)):  # every way the network may cut it
        rw = StreamIdRewriter("chatcmpl-new")
        out = b"".join(rw.feed(stream[i : i + size]) for i in range(0, len(stream), size)) + rw.flush()
        assert out.count(b'"id":"chatcmpl-new"') == 3 and b'"0"' not in out and out.endswith(b"data: [DONE]\n\n")
        assert rw.upstream_id == "0"
    rw = StreamIdRewriter("chatcmpl-new")
    out = rw.feed(b'data: {"id":7,"choices":[]}\n\ndata: {"id":7,"choices":[],"n":77}\n\n') + rw.flush()
    assert out.count(b'"id":"chatcmpl-new"') == 2 and b"77" in out and rw.upstream_id == "7"
    # Azure: a prompt_filter_results chunk with an empty id comes first, sorted keys throughout
    azure = (b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[]}\n\n'
             b'data: {"choices":[{"delta":{"content":"hi"},"index":0}],"created":1,"id":"chatcmpl-az","model":"gpt-4o"}\n\n'
             b'data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}],"created":1,"id":"chatcmpl-az","model":"gpt-4o"}\n\n'
             b"data: [DONE]\n\n")
    rw = StreamIdRewriter("chatcmpl-new")
    out = b"".join(rw.feed(azure[i : i + 5]) for i in range(0, len(azure), 5)) + rw.flush()
    assert out.count(b'"id":"chatcmpl-new"') == 3 and b"chatcmpl-az" not in out and rw.upstream_id == "chatcmpl-az"
    # bodies: id first (byte replacement), elsewhere (one parse, bytes kept), missing or not a string
    assert rewrite_body(b'{"id":"a","x":1.50}', "n") == (b'{"id":"n","x":1.50}', "a")
    assert rewrite_body(b'{"c":[{"id":"t"}],"id":"a","x":1.50}', "n") == (b'{"c":[{"id":"t"}],"id":"n","x":1.50}', "a")
    assert orjson.loads(rewrite_body(b'{"x":1}', "n")[0]) == {"id": "n", "x": 1}
    assert rewrite_body(b'{"id":5,"x":1}', "n") == (b'{"id":"n","x":1}', "5")
    assert rewrite_body(b"not json", "n") == (b"not json", None)


def test_feedback_api_on_a_repeating_upstream_corrects_one_example(store_db, tmp_path, repeating):
    """The whole app (proxy + feedback and dataset API), as a user runs it in front of Ollama."""
    from protege.app import build_app
    from protege.settings import load_settings
    from tests.fixtures.http import call

    app, _store, writer = build_app(load_settings(db=store_db, data_dir=str(tmp_path / "app-data"), upstream=repeating.base_url))
    served = Served(app, fast=False)
    try:
        root = served.url
        c = openai.OpenAI(base_url=root + "/v1", api_key=KEY, max_retries=0)
        ids = [c.chat.completions.create(model="gpt-4o", messages=messages(r)).id for r in REVIEWS]
        assert writer.flush(10)
        status, fb = call("POST", f"{root}/protege/v1/completions/{ids[1]}/feedback", {"correction": "negative"})
        assert status == 200 and fb["completion_id"] == ids[1]
        for cid, n in zip(ids, (0, 1, 0)):
            status, page = call("GET", f"{root}/protege/v1/completions/{cid}/feedback")
            assert status == 200 and len(page["data"]) == n
        status, dv = call("POST", f"{root}/protege/v1/datasets", {"name": "reviews", "validation_fraction": 0})
        assert status == 200, dv
        lines = [orjson.loads(x) for x in open(dv["files"]["train"]["path"], "rb")]
        assert {e["messages"][-2]["content"]: e["messages"][-1]["content"] for e in lines} == {
            "the pizza was great": "positive", "the pizza was terrible": "negative", "the pizza was fine": "positive",
        }
    finally:
        served.stop(20)
