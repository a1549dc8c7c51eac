"""The proxy's chat path with the real openai SDK, through uvicorn, to the fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import httpx2 as httpx  # the HTTP client the openai SDK itself uses
import openai
import pytest

from tests.fakes.openai_upstream import FakeError, start_fake_openai
from tests.fixtures.http import free_port as _free_port
from tests.fixtures.stores import stored_bytes

KEY = "sk-client-secret-4242"
MSG = [{"role": "user", "content": "hello proxy world"}]


def client(proxy, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=kw.pop("api_key", KEY), max_retries=0, **kw)


def test_non_streaming_is_forwarded_and_captured(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url)
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG, metadata={"use_case": "demo"}, store=True
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "hello proxy world"
    assert raw.headers["x-protege-served-by"] == "teacher"
    assert raw.headers["x-request-id"].startswith("req_")
    # the client's key was passed through
    assert fake_openai.chat_requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    (rec,) = proxy.records()
    assert rec["id"] == resp.id and rec["outcome"] == "ok" and rec["status_code"] == 200
    assert rec["model_requested"] == "gpt-4o-mini" and rec["model"] == resp.model
    assert json.loads(rec["metadata"]) == {"use_case": "demo"} and rec["store"] is True
    assert rec["total_tokens"] == resp.usage.total_tokens and rec["finish_reason"] == "stop"
    assert rec["stream"] is False and rec["upstream"] == fake_openai.base_url
    assert rec["latency_ms"] > 0 and rec["request_id"] == raw.headers["x-request-id"]
    assert len(rec["key_hash"]) == 16 and KEY not in rec["key_hash"]
    assert json.loads(rec["request"])["messages"] == MSG
    assert rec["served_by"] == "teacher"


def test_stream_passes_through_and_is_reassembled_with_injected_usage(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url)
    # raw SSE bytes: no usage keys and no usage chunk, since the client did not ask
    with httpx.stream("POST", proxy.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "gpt-4o-mini", "messages": MSG, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
        body = r.read().decode()
    assert '"usage"' not in body and body.rstrip().endswith("data: [DONE]")
    assert fake_openai.chat_requests[-1]["json"]["stream_options"] == {"include_usage": True}
    # the SDK's stream helper gets the full text; usage only when asked for
    c = client(proxy)
    with c.chat.completions.stream(model="gpt-4o-mini", messages=MSG) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == "hello proxy world" and final.usage is None
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 6
    recs = proxy.records()
    assert len(recs) == 3
    for rec in recs:
        assert rec["stream"] is True and rec["outcome"] == "ok"
        resp = json.loads(rec["response"])
        assert resp["choices"][0]["message"]["content"] == "hello proxy world"
        assert rec["total_tokens"] == 6 and rec["finish_reason"] == "stop"
        assert rec["ttft_ms"] is not None and rec["ttft_ms"] <= rec["latency_ms"]


def test_tool_calls_streamed_and_not(run_proxy):
    tool_calls = [{"function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}},
                  {"function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}}]
    fake = start_fake_openai(lambda body: {"content": None, "tool_calls": tool_calls})
    try:
        proxy = run_proxy(upstream=fake.base_url)
        c = client(proxy)
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
        r = c.chat.completions.create(model="gpt-4o", messages=MSG, tools=tools)
        assert r.choices[0].message.tool_calls[1].function.name == "get_time"
        with c.chat.completions.stream(model="gpt-4o", messages=MSG, tools=tools) as s:
            final = s.get_final_completion()
        assert final.choices[0].message.tool_calls[0].function.arguments == tool_calls[0]["function"]["arguments"]
        recs = proxy.records()
        streamed = json.loads(recs[1]["response"])["choices"][0]
        assert streamed["finish_reason"] == "tool_calls"
        assert [t["function"] for t in streamed["message"]["tool_calls"]] == [t["function"] for t in tool_calls]
        assert streamed["message"]["tool_calls"][0]["id"].startswith("call_")
    finally:
        fake.stop()


def test_async_client(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url)

    async def go():
        c = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
        results = await asyncio.gather(*[c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"n {i}"}]) for i in range(20)])
        stream = await c.chat.completions.create(model="m", messages=MSG, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        await c.close()
        return results, text

    results, text = asyncio.run(go())
    assert sorted(r.choices[0].message.content for r in results) == sorted(f"n {i}" for i in range(20))
    assert text == "hello proxy world"
    assert len(proxy.records()) == 21


def test_azure_routes(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url)
    az = openai.AzureOpenAI(azure_endpoint=proxy.url, api_key=KEY, api_version="2025-02-01-preview", max_retries=0)
    r = az.chat.completions.create(model="my-deploy", messages=MSG)
    assert r.choices[0].message.content == "hello proxy world"
    v1 = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key=KEY, max_retries=0)
    assert v1.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices[0].message.content == "hello proxy world"
    # api-key header accepted and passed through as the upstream credential
    assert fake_openai.chat_requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    recs = proxy.records()
    assert [r["model_requested"] for r in recs] == ["my-deploy", "gpt-4o-mini"]


def test_azure_upstream_maps_to_deployment_path(fake_openai, run_proxy):
    proxy = run_proxy(azure_endpoint=fake_openai.root_url, azure_api_key="server-azure-key", proxy_keys=["pk-1"])
    c = client(proxy, api_key="pk-1")
    assert c.chat.completions.create(model="gpt4o-deploy", messages=MSG).choices[0].message.content == "hello proxy world"
    req = fake_openai.chat_requests[-1]
    assert req["path"] == "/openai/deployments/gpt4o-deploy/chat/completions"
    assert req["query"]["api-version"] and req["headers"]["api-key"] == "server-azure-key"
    assert "authorization" not in req["headers"]  # the proxy key is not forwarded
    # Azure classic non-chat calls are forwarded to the same Azure paths
    az = openai.AzureOpenAI(azure_endpoint=proxy.url, api_key="pk-1", api_version="2025-02-01-preview", max_retries=0)
    assert len(az.embeddings.create(model="emb-deploy", input=["x y"]).data) == 1
    seen = fake_openai.requests[-1]
    assert seen["path"] == "/openai/deployments/emb-deploy/embeddings" and seen["headers"]["api-key"] == "server-azure-key"


def test_azure_entra_token_is_cached(fake_openai, run_proxy, monkeypatch):
    from azure.core.credentials import AccessToken

    from protege.proxy import upstream as upstream_mod

    calls = []

    class FakeCredential:
        def get_token(self, scope):
            calls.append(scope)
            # the first token is about to expire (inside the refresh margin), the second is fresh
            return AccessToken(f"entra-token-{len(calls)}", int(time.time()) + (120 if len(calls) == 1 else 3600))

    monkeypatch.setattr(upstream_mod, "make_credential", FakeCredential)
    proxy = run_proxy(azure_endpoint=fake_openai.root_url, azure_auth="entra")
    c = openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0, default_headers={"Authorization": ""})
    for _ in range(3):
        httpx.post(proxy.base_url + "/chat/completions", json={"model": "dep", "messages": MSG}).raise_for_status()
    assert calls == ["https://cognitiveservices.azure.com/.default"] * 2
    assert [r["headers"]["authorization"] for r in fake_openai.chat_requests] == [
        "Bearer entra-token-1", "Bearer entra-token-2", "Bearer entra-token-2"]
    assert fake_openai.chat_requests[0]["path"] == "/openai/deployments/dep/chat/completions"
    del c


def test_passthrough_other_v1_paths(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url)
    c = client(proxy)
    assert [m.id for m in c.models.list()] == ["gpt-4o-mini", "gpt-4o"]
    emb = c.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert len(emb.data) == 2
    r = httpx.post(proxy.base_url + "/responses?x=1", json={"model": "m"}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/responses)"
    seen = fake_openai.requests[-1]
    assert seen["path"] == "/v1/responses" and seen["query"] == {"x": "1"} and seen["method"] == "POST"
    assert proxy.records() == []  # passthrough is not captured as a chat completion


def test_capture_modes_and_opt_out(fake_openai, run_proxy):
    p_all = run_proxy(upstream=fake_openai.base_url)
    c = client(p_all)
    c.chat.completions.create(model="m", messages=MSG)
    c.chat.completions.create(model="m", messages=MSG, extra_headers={"X-Protege-Capture": "off"})
    assert "x-protege-capture" not in fake_openai.chat_requests[-1]["headers"]
    assert len(p_all.records()) == 1
    p_store = run_proxy(upstream=fake_openai.base_url, capture="store")
    c = client(p_store)
    c.chat.completions.create(model="m", messages=MSG)
    c.chat.completions.create(model="m", messages=MSG, store=True)
    recs = p_store.records()
    assert len(recs) == 1 and recs[0]["store"] is True
    p_none = run_proxy(upstream=fake_openai.base_url, capture="none")
    client(p_none).chat.completions.create(model="m", messages=MSG, store=True)
    assert p_none.records() == []


def test_forward_store_off_strips_store_and_metadata(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url, forward_store=False)
    client(proxy).chat.completions.create(model="m", messages=MSG, store=True, metadata={"k": "v"})
    sent = fake_openai.chat_requests[-1]["json"]
    assert "store" not in sent and "metadata" not in sent
    (rec,) = proxy.records()
    assert json.loads(rec["metadata"]) == {"k": "v"} and rec["store"] is True
    proxy2 = run_proxy(upstream=fake_openai.base_url)
    client(proxy2).chat.completions.create(model="m", messages=MSG, store=True, metadata={"k": "v"})
    assert fake_openai.chat_requests[-1]["json"]["metadata"] == {"k": "v"}


def test_bad_input(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url, max_body_bytes=2000)
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(proxy.base_url + "/chat/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(proxy.base_url + "/chat/completions", content=b"[1, 2]", headers=h)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("We could not parse the JSON body")
    r = httpx.post(proxy.base_url + "/chat/completions", json={"model": 5, "messages": MSG}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(proxy.base_url + "/chat/completions", content=b"x" * 5000, headers=h)
    assert r.status_code == 413 and "error" in r.json()
    c = client(proxy)
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="m", messages=MSG, metadata={f"k{i}": "v" for i in range(17)})
    assert exc.value.code == "object_above_max_properties" and exc.value.param == "metadata"
    assert exc.value.body["message"] == (
        "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
        "but got an object with 17 properties instead."
    )
    for bad in ({"k" * 65: "v"}, {"k": "v" * 513}, {"k": 1}):
        with pytest.raises(openai.BadRequestError) as exc:
            c.chat.completions.create(model="m", messages=MSG, metadata=bad)
        assert exc.value.param == "metadata"
    assert fake_openai.chat_requests == [] and proxy.records() == []


def test_upstream_errors_pass_through_and_are_captured(run_proxy):
    def reply(body):
        if body["model"] == "missing":
            raise FakeError(404, "The model `missing` does not exist or you do not have access to it.", code="model_not_found")
        raise FakeError(500, "The server had an error while processing your request.", type="server_error")

    fake = start_fake_openai(reply)
    try:
        proxy = run_proxy(upstream=fake.base_url)
        c = client(proxy)
        with pytest.raises(openai.NotFoundError) as exc:
            c.chat.completions.create(model="missing", messages=MSG)
        assert exc.value.code == "model_not_found"
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="m", messages=MSG)
        with pytest.raises(openai.InternalServerError):
            list(c.chat.completions.create(model="m", messages=MSG, stream=True))
        recs = proxy.records()
        assert [(r["outcome"], r["status_code"]) for r in recs] == [("upstream_error", 404), ("upstream_error", 500), ("upstream_error", 500)]
        assert json.loads(recs[0]["error"])["error"]["code"] == "model_not_found"
    finally:
        fake.stop()



def test_upstream_down_and_timeout(run_proxy):
    proxy = run_proxy(upstream=f"http://127.0.0.1:{_free_port()}/v1")
    with pytest.raises(openai.InternalServerError) as exc:
        client(proxy).chat.completions.create(model="m", messages=MSG)
    assert exc.value.status_code == 502
    slow = start_fake_openai(delay=1.0)
    try:
        proxy2 = run_proxy(upstream=slow.base_url, upstream_timeout=0.2)
        with pytest.raises(openai.InternalServerError) as exc:
            client(proxy2).chat.completions.create(model="m", messages=MSG)
        assert exc.value.status_code == 504
        assert [r["outcome"] for r in proxy2.records()] == ["timeout"]
    finally:
        slow.stop()
    (rec,) = proxy.records()
    assert rec["outcome"] == "unreachable" and rec["status_code"] == 502 and json.loads(rec["error"])["error"]


def test_client_gone_mid_stream(run_proxy):
    fake = start_fake_openai(lambda b: " ".join(f"w{i}" for i in range(200)), chunk_delay=0.02)
    try:
        proxy = run_proxy(upstream=fake.base_url)
        with httpx.stream("POST", proxy.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "m", "messages": MSG, "stream": True}) as r:
            it = r.iter_raw()
            next(it)
            next(it)
        time.sleep(0.5)
        (rec,) = proxy.records()
        assert rec["outcome"] == "client_disconnected" and rec["stream"] is True
        content = json.loads(rec["response"])["choices"][0]["message"]["content"]
        assert content.startswith("w0") and len(content.split()) < 200
    finally:
        fake.stop()


def test_proxy_and_admin_keys(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url, upstream_api_key="sk-server-key", proxy_keys=["pk-user"], admin_keys=["ak-admin"])
    with pytest.raises(openai.AuthenticationError):
        client(proxy, api_key="wrong").chat.completions.create(model="m", messages=MSG)
    r = httpx.post(proxy.base_url + "/chat/completions", json={"model": "m", "messages": MSG})
    assert r.status_code == 401 and r.json()["error"]["message"]
    resp = client(proxy, api_key="pk-user").chat.completions.create(model="m", messages=MSG, store=True)
    assert fake_openai.chat_requests[-1]["headers"]["authorization"] == "Bearer sk-server-key"
    with pytest.raises(openai.PermissionDeniedError):
        client(proxy, api_key="pk-user").chat.completions.retrieve(resp.id)
    with pytest.raises(openai.AuthenticationError):
        client(proxy, api_key="nope").chat.completions.list()
    proxy.records()
    assert client(proxy, api_key="ak-admin").chat.completions.retrieve(resp.id).id == resp.id
    assert [m.id for m in client(proxy, api_key="pk-user").models.list()][0] == "gpt-4o-mini"
    assert fake_openai.requests[-1]["headers"]["authorization"] == "Bearer sk-server-key"


def test_client_key_never_written(fake_openai, run_proxy, make_db, caplog):
    caplog.set_level(logging.DEBUG)
    db = make_db("keys")
    proxy = run_proxy(upstream=fake_openai.base_url, db=db)
    c = client(proxy)
    c.chat.completions.create(model="m", messages=MSG, store=True)
    list(c.chat.completions.create(model="m", messages=MSG, stream=True))
    openai.AzureOpenAI(azure_endpoint=proxy.url, api_key=KEY, api_version="2025-02-01-preview", max_retries=0).chat.completions.create(model="d", messages=MSG)
    assert len(proxy.records()) == 3
    proxy.stop()
    raw = stored_bytes(db)
    assert KEY.encode() not in raw and b"client-secret" not in raw
    assert KEY not in caplog.text


def test_metrics_and_healthz(fake_openai, run_proxy):
    proxy = run_proxy(upstream=fake_openai.base_url)
    client(proxy).chat.completions.create(model="m", messages=MSG)
    proxy.records()
    assert httpx.get(proxy.url + "/healthz").json()["status"] == "ok"
    text = httpx.get(proxy.url + "/metrics").text
    assert 'protege_requests_total{route="chat",status="200"} 1' in text
    assert 'protege_requests_total{route="api",status="200"} 1' in text  # the /healthz call
    assert "protege_upstream_latency_seconds_count 1" in text
    assert "protege_capture_queue_depth 0" in text
    assert "protege_captures_written_total 1" in text and "protege_captures_spooled_total 0" in text


def _broken_stream_upstream() -> tuple[str, "threading.Thread", socket.socket]:
    """An upstream that starts an SSE stream, sends two chunks, then drops the connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        conn, _ = srv.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(body) < length:
            body += conn.recv(65536)
        chunk = lambda d: b'data: {"id":"chatcmpl-broken","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":%s,"finish_reason":null}]}\n\n' % d
        events = [chunk(b'{"role":"assistant","content":""}'), chunk(b'{"content":"partial"}')]
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for ev in events:
            conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
        time.sleep(0.1)
        conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}/v1", t, srv


def test_upstream_breaks_mid_stream(run_proxy):
    url, thread, _srv = _broken_stream_upstream()
    proxy = run_proxy(upstream=url)
    c = client(proxy)
    got = []
    with pytest.raises(openai.APIError) as exc:
        for ch in c.chat.completions.create(model="m", messages=MSG, stream=True):
            got.append(ch.choices[0].delta.content or "")
    assert "".join(got) == "partial" and "upstream" in exc.value.message
    thread.join(5)
    (rec,) = proxy.records()
    assert rec["outcome"] == "upstream_error" and rec["stream"] is True and rec["error"]
    assert json.loads(rec["response"])["choices"][0]["message"]["content"] == "partial"


def test_upstream_stalls_mid_stream(run_proxy):
    slow = start_fake_openai(lambda b: "one two three", chunk_delay=1.5)
    try:
        proxy = run_proxy(upstream=slow.base_url, upstream_timeout=0.3)
        with httpx.stream("POST", proxy.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "m", "messages": MSG, "stream": True}) as r:
            body = r.read().decode()
        assert r.status_code == 200
        last = body.strip().split("\n\n")[-1]
        assert last.startswith("data: ") and json.loads(last[6:])["error"]["code"] == "upstream_timeout"
        (rec,) = proxy.records()
        assert rec["outcome"] == "timeout"
    finally:
        slow.stop()


def test_stream_chunks_are_not_buffered(run_proxy):
    slow = start_fake_openai(lambda b: "a b c d", chunk_delay=0.3)
    try:
        proxy = run_proxy(upstream=slow.base_url)
        c = client(proxy)
        t0 = time.monotonic()
        arrivals = [(time.monotonic() - t0, ch) for ch in c.chat.completions.create(model="m", messages=MSG, stream=True)]
        first_text = next(t for t, ch in arrivals if ch.choices and ch.choices[0].delta.content)
        assert arrivals[-1][0] > 1.2 and first_text < 0.9, [round(t, 2) for t, _ in arrivals]
    finally:
        slow.stop()
