"""Endpoint students: a second OpenAI-shaped server registered once, then served as protege/<name>
through the proxy, listed, routed to (full route) and rolled back."""

from __future__ import annotations

import time

import openai
import pytest
from typer.testing import CliRunner

from protege.distill.auto.routing import StoreRouter  # noqa: F401  (the app wires it)
from protege.settings import Settings
from protege.store import Store
from protege.store import auto as store_auto
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.stores import stored_bytes
from tests.servers import AppServer, http_json


@pytest.fixture
def servers(store_db, monkeypatch):
    teacher = start_fake_openai(lambda body: "teacher says hi")
    remote = start_fake_openai(lambda body: f"remote({body.get('model')}) says hi")
    monkeypatch.setenv("REMOTE_STUDENT_KEY", "sk-remote-secret")
    db = store_db
    from protege.cli import app as cli_app

    r = CliRunner().invoke(cli_app, ["--db", db, "students", "add", "remote", "--base-url", remote.base_url, "--model", "llama3",
                                     "--api-key-env", "REMOTE_STUDENT_KEY"])
    assert r.exit_code == 0, r.output
    settings = Settings(db=db, upstream=teacher.base_url, upstream_api_key="sk-teacher")
    srv = AppServer(settings)
    yield srv, teacher, remote, db
    srv.stop()
    teacher.stop()
    remote.stop()


def test_endpoint_student_answers_through_the_proxy(servers):
    srv, teacher, remote, db = servers
    client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
    out = client.chat.completions.create(model="protege/remote", messages=[{"role": "user", "content": "hi"}], temperature=0)
    assert out.choices[0].message.content == "remote(llama3) says hi" and out.model == "protege/remote"
    sent = remote.chat_requests[-1]
    assert sent["json"]["model"] == "llama3" and sent["json"]["temperature"] == 0
    assert sent["headers"]["authorization"] == "Bearer sk-remote-secret"
    chunks = list(client.chat.completions.create(model="protege/remote", messages=[{"role": "user", "content": "hi"}], stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "remote(llama3) says hi"
    assert chunks[-1].usage is not None
    assert teacher.chat_requests == []
    assert "protege/remote" in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="protege/remote@v1", messages=[{"role": "user", "content": "hi"}])
    recs = [r for r in srv.records() if r["model_requested"] == "protege/remote"]
    assert len(recs) == 2 and all(r["served_by"] == "student" and r["status_code"] == 200 for r in recs)


def test_key_is_never_stored_and_api_registers(servers):
    srv, teacher, remote, db = servers
    status, body = http_json("POST", srv.url + "/protege/v1/students", {"name": "other", "base_url": remote.base_url, "model": "m2", "api_key": "sk-nope"})
    assert status == 400 and body["error"]["param"] == "api_key"
    status, body = http_json("POST", srv.url + "/protege/v1/students", {"name": "other", "base_url": remote.base_url, "model": "m2"})
    assert status == 200 and body["model"] == "protege/other" and body["api_key_env"] is None
    status, body = http_json("POST", srv.url + "/protege/v1/students", {"name": "bad", "base_url": "ftp://x", "model": "m"})
    assert status == 400 and body["error"]["param"] == "base_url"
    client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
    assert client.chat.completions.create(model="protege/other", messages=[{"role": "user", "content": "q"}]).choices[0].message.content == "remote(m2) says hi"
    listed = http_json("GET", srv.url + "/protege/v1/students")[1]["data"]
    assert {s["name"] for s in listed if s["kind"] == "endpoint"} == {"remote", "other"}
    srv.stop()
    raw = stored_bytes(db)
    assert b"sk-remote-secret" not in raw and b"REMOTE_STUDENT_KEY" in raw


def test_endpoint_errors_are_passed_on(store_db, monkeypatch):
    from tests.fakes.openai_upstream import FakeError

    def refuse(body):
        raise FakeError(400, "context too long", code="context_length_exceeded", param="messages")

    remote = start_fake_openai(refuse)
    store = Store(store_db)
    from protege.distill.finetune import students_admin

    students_admin.add_endpoint(store, name="picky", base_url=remote.base_url, model="m", api_key_env="PICKY_KEY_UNSET")
    students_admin.add_endpoint(store, name="down", base_url="http://127.0.0.1:9/v1", model="m")
    monkeypatch.delenv("PICKY_KEY_UNSET", raising=False)
    srv = AppServer(Settings(db=store.path, upstream="http://127.0.0.1:9/v1", upstream_api_key="sk-x"), store=store)
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="protege/picky", messages=[{"role": "user", "content": "q"}])
        assert err.value.code == "student_key_missing" and "PICKY_KEY_UNSET" in err.value.message
        monkeypatch.setenv("PICKY_KEY_UNSET", "sk-p")
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="protege/picky", messages=[{"role": "user", "content": "q"}])
        assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="protege/down", messages=[{"role": "user", "content": "q"}])
        assert err.value.status_code == 502 and err.value.code == "student_endpoint_unreachable"
    finally:
        srv.stop()
        remote.stop()


def _ask_until_served_by(client, who: str, timeout: float = 10.0):
    """Ask until ``who`` (student, teacher) answers, once the proxy has seen a route change, or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        if raw.headers.get("x-protege-served-by") == who or time.monotonic() > deadline:
            return raw
        time.sleep(0.1)


def test_full_route_to_an_endpoint_student_and_rollback(servers):
    srv, teacher, remote, _db = servers
    route = store_auto.create_route(srv.store, "policy_e", "protege/remote", "full", match_model="gpt-4o-mini", match_metadata={}, percent=100.0)
    client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
    raw = _ask_until_served_by(client, "student")
    assert raw.headers.get("x-protege-served-by") == "student" and raw.parse().choices[0].message.content == "remote(llama3) says hi"
    store_auto.end_route(srv.store, route.id)  # rollback
    raw = _ask_until_served_by(client, "teacher")
    assert raw.parse().choices[0].message.content == "teacher says hi"


def test_the_gate_asks_an_endpoint_student(store_db):
    """The automatic loop's gate evaluation reaches endpoint students through the registry too."""
    from protege.distill.auto.worker import _predict
    from protege.distill.auto.policies import parse_policy
    from protege.distill.finetune import students_admin

    remote = start_fake_openai(lambda body: f"label:{body['messages'][-1]['content']}")
    store = Store(store_db)
    try:
        students_admin.add_endpoint(store, name="gated", base_url=remote.base_url, model="m")
        policy = parse_policy({"name": "p", "match": {"model": "gpt-4o-mini"}, "trigger": {"min_new_completions": 100}, "gate": {"metrics": ["exact_match"]}})
        prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
        assert _predict(store, Settings(), policy, "protege/gated", prompts) == [f"label:q{i}" for i in range(5)]
        assert all(r["json"]["temperature"] == 0 and r["json"]["model"] == "m" for r in remote.chat_requests)
    finally:
        store.close()
        remote.stop()
