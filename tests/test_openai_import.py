"""`protege completions import --from-openai`: a team's Stored Completions pulled from OpenAI's API
with the official SDK (the fake answers like OpenAI: cursor pages, filters, input messages),
idempotently, into a real DuckDB store."""

from __future__ import annotations

import json
import os
import time

import openai
import orjson
import pytest
from typer.testing import CliRunner

from protege.cli import app
from protege.store import Store, count
from protege.store.completions import get_record, input_messages
from protege.store.openai_import import pull_stored_completions
from tests.fakes.openai_upstream import start_fake_openai

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith(("PROTEGE_", "OPENAI_"))]:
        monkeypatch.delenv(key)


@pytest.fixture
def fake():
    server = start_fake_openai(reply=lambda body: f"answer to {body['messages'][-1]['content']}")
    yield server
    server.stop()


def sdk(fake) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)


def seed(fake, n: int = 25) -> list[str]:
    """n completions stored at OpenAI: 15 tagged task=intent on gpt-4o-mini, the rest task=summary on gpt-4o."""
    ids = []
    t0 = int(time.time()) - 1000
    for i in range(n):
        intent = i < 15
        ids.append(fake.add_stored(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {i}"}], f"answer {i}",
            model="gpt-4o-mini-2024-07-18" if intent else "gpt-4o-2024-08-06",
            metadata={"task": "intent" if intent else "summary", "i": str(i)}, created=t0 + i, temperature=0.2, seed=7))
    return ids


def test_fake_stored_completions_behave_like_openai(fake) -> None:
    client = sdk(fake)
    made = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], store=True,
                                          metadata={"task": "live"})
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "not kept"}])  # store unset
    ids = [made.id] + seed(fake, 25)
    first = client.chat.completions.list(limit=10)
    assert first.has_more is True and len(first.data) == 10
    # auto-pagination walks after=<last id> pages; asc by created
    everything = [c.id for c in client.chat.completions.list(limit=10)]
    assert sorted(everything) == sorted(ids) and len(everything) == 26
    created = [c.created for c in client.chat.completions.list(limit=7)]
    assert created == sorted(created)
    desc = [c.id for c in client.chat.completions.list(limit=7, order="desc")]
    assert desc == everything[::-1]
    intent = [c.id for c in client.chat.completions.list(metadata={"task": "intent"}, limit=4)]
    assert intent == ids[1:16]
    assert [c.id for c in client.chat.completions.list(metadata={"task": "intent", "i": "3"})] == [ids[4]]
    assert len(list(client.chat.completions.list(model="gpt-4o-2024-08-06"))) == 10
    got = client.chat.completions.retrieve(ids[1])
    assert got.metadata == {"task": "intent", "i": "0"} and got.choices[0].message.content == "answer 0"
    msgs = client.chat.completions.messages.list(ids[1], limit=1)
    assert [m.id for m in msgs.data] == [f"{ids[1]}-0"] and msgs.has_more is True
    assert [(m.role, m.content) for m in client.chat.completions.messages.list(ids[1], limit=1)] == [
        ("system", "Be brief."), ("user", "question 0")]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.messages.list("chatcmpl-nope")


def test_pull_is_idempotent_and_keeps_what_openai_kept(fake, store_db) -> None:
    ids = seed(fake, 25)
    store = Store(store_db)
    try:
        seen: list[int] = []
        res = pull_stored_completions(store, sdk(fake), progress=seen.append)
        assert (res.listed, res.imported, res.skipped, res.failed) == (25, 25, 0, 0)
        assert sum(seen) == 25 and count(store) == 25
        rec = get_record(store, ids[3])
        assert rec["model"] == "gpt-4o-mini-2024-07-18" and json.loads(rec["metadata"]) == {"task": "intent", "i": "3"}
        assert input_messages(store, ids[3]) is not None
        request = orjson.loads(rec["request"])
        assert request["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "question 3"}]
        assert request["temperature"] == 0.2 and request["seed"] == 7  # OpenAI's stored request parameters
        assert orjson.loads(rec["response"])["choices"][0]["message"]["content"] == "answer 3"
        messages_calls = [r for r in fake.requests if r["path"].endswith("/messages")]
        assert len(messages_calls) == 25
        again = pull_stored_completions(store, sdk(fake))
        assert (again.listed, again.imported, again.skipped) == (25, 0, 25) and count(store) == 25
        assert len([r for r in fake.requests if r["path"].endswith("/messages")]) == 25  # known ones are not fetched again
        # new traffic at OpenAI: only that comes in
        fake.add_stored([{"role": "user", "content": "late"}], "late answer", metadata={"task": "intent"})
        late = pull_stored_completions(store, sdk(fake))
        assert (late.imported, late.skipped) == (1, 25) and count(store) == 26
    finally:
        store.close()


def test_filters_and_content_parts(fake, store_db) -> None:
    seed(fake, 25)
    parts = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]
    tool_turns = [{"role": "user", "content": parts},
                  {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                                        "function": {"name": "look", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}]
    cid = fake.add_stored(tool_turns, "a cat", metadata={"task": "vision"})
    store = Store(store_db)
    try:
        res = pull_stored_completions(store, sdk(fake), metadata={"task": "intent"}, model="gpt-4o-mini-2024-07-18", limit=10)
        assert (res.listed, res.imported) == (10, 10)
        lists = [r for r in fake.requests if r["path"] == "/v1/chat/completions" and r["method"] == "GET"]
        assert lists[0]["query"]["metadata[task]"] == "intent" and lists[0]["query"]["model"] == "gpt-4o-mini-2024-07-18"
        assert pull_stored_completions(store, sdk(fake), metadata={"task": "vision"}).imported == 1
        request = orjson.loads(get_record(store, cid)["request"])
        assert request["messages"][0]["content"] == parts
        assert request["messages"][1]["tool_calls"][0]["function"]["name"] == "look"
        assert request["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
    finally:
        store.close()


def test_cli_from_openai_with_counts_and_env_config(fake, store_db, monkeypatch) -> None:
    seed(fake, 25)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-team")
    db = store_db
    r = runner.invoke(app, ["--db", db, "completions", "import", "--from-openai", "--metadata", "task=intent", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"listed": 15, "imported": 15, "skipped_existing": 0, "failed": 0, "errors": []}
    assert {r["headers"].get("authorization") for r in fake.requests} == {"Bearer sk-team"}
    r = runner.invoke(app, ["--db", db, "completions", "import", "--from-openai"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "imported 10 of 25 stored completions from OpenAI, 15 already here"
    r = runner.invoke(app, ["--db", db, "completions", "import", "--from-openai", "--json"])
    assert json.loads(r.stdout)["imported"] == 0 and json.loads(r.stdout)["skipped_existing"] == 25
    r = runner.invoke(app, ["--db", db, "completions", "list", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["data"]) == 20  # the CLI's default page


def test_cli_errors_are_one_line(fake, store_db, monkeypatch) -> None:
    db = store_db
    r = runner.invoke(app, ["--db", db, "completions", "import", "--from-openai"])
    assert r.exit_code == 1 and r.stderr.strip() == "error: no OpenAI API key: set OPENAI_API_KEY (and OPENAI_BASE_URL for another endpoint)"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-team")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.root_url + "/nowhere/v1")
    r = runner.invoke(app, ["--db", db, "completions", "import", "--from-openai"])
    assert r.exit_code == 1 and r.stderr.startswith("error: OpenAI refused to list stored completions (404): Invalid URL")
    assert len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["--db", db, "completions", "import", "x.jsonl", "--from-openai"])
    assert r.exit_code == 1 and "not both" in r.stderr
    r = runner.invoke(app, ["--db", db, "completions", "import", "--metadata", "a=b", "x.jsonl"])
    assert r.exit_code == 1 and "--from-openai imports only" in r.stderr
