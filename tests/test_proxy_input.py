"""Small proxy input items (issue 8): stream_options types, malformed metadata filters, a client that
leaves before a non-streamed answer, and bodies that arrive in many pieces. Real proxy, fake
upstream, httpx / raw sockets as clients."""

from __future__ import annotations

import json
import socket
import time

import httpx2 as httpx  # the HTTP client the openai SDK itself uses
import openai

from tests.fakes.openai_upstream import start_fake_openai

MSG = [{"role": "user", "content": "hello there"}]


def _err(resp: httpx.Response, status: int = 400) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


STREAM_OPTIONS = [("yes", "a string"), (["include_usage"], "an array"), (1, "an integer"), (True, "a boolean"),
                  ({"include_usage": "true"}, "a string"), ({"include_usage": 1}, "an integer")]
BAD_FILTERS = ["metadata[=x", "metadata[]=x", "metadata=x", "metadata[a][b]=x", "metadata[a=x", "metadata[a]x=1",
               "metadata[a]=1&metadata[a]=2", "metadata[" + "k" * 65 + "]=v", "metadata[a]=" + "v" * 513,
               "&".join(f"metadata[k{i}]=v" for i in range(17))]


def test_stream_options_of_the_wrong_type_is_openais_400(fake_openai, run_proxy) -> None:
    proxy = run_proxy(upstream=fake_openai.base_url)
    for stream in (True, False):
        for options, type_text in STREAM_OPTIONS:
            body = {"model": "m", "messages": MSG, "stream": stream, "stream_options": options}
            err = _err(httpx.post(proxy.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer sk-c"}))
            assert err["param"] == "stream_options" and err["code"] == "invalid_type" and err["type"] == "invalid_request_error"
            assert err["message"].startswith("Invalid type for 'stream_options") and type_text in err["message"], err
    assert fake_openai.chat_requests == []
    # The proxy keeps serving, and a well-formed stream_options still streams with usage.
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-c", max_retries=0)
    chunks = list(client.chat.completions.create(model="m", messages=MSG, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None
    assert [r["outcome"] for r in proxy.records()] == ["ok"]


def test_a_malformed_metadata_filter_is_a_400(fake_openai, run_proxy) -> None:
    proxy = run_proxy(upstream=fake_openai.base_url)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-c", max_retries=0)
    client.chat.completions.create(model="m", messages=MSG, metadata={"a": "1"})
    proxy.records()
    for query in BAD_FILTERS:
        err = _err(httpx.get(proxy.base_url + "/chat/completions?" + query))
        assert err["param"] == "metadata", (query, err)
    # The well-formed filter (the SDK's bracket encoding) still filters.
    assert len(client.chat.completions.list(metadata={"a": "1"}).data) == 1
    assert client.chat.completions.list(metadata={"a": "2"}).data == []


def test_a_client_that_leaves_before_a_non_streamed_answer_is_recorded_as_disconnected(run_proxy) -> None:
    fake = start_fake_openai(delay=1.5)
    try:
        proxy = run_proxy(upstream=fake.base_url)
        host, port = proxy.url[len("http://"):].split(":")
        body = json.dumps({"model": "m", "messages": MSG, "metadata": {"who": "leaver"}}).encode()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-c\r\n"
                     b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.4)  # the upstream is still thinking
        sock.close()
        deadline = time.monotonic() + 10
        records = []
        while time.monotonic() < deadline and not records:
            records = proxy.records()
            time.sleep(0.1)
        (rec,) = records
        assert rec["outcome"] == "client_disconnected" and rec["stream"] is False
        assert rec["latency_ms"] < 1400  # recorded when the client left, not when the upstream answered
        # Nothing else is affected: the next request is answered and recorded as ok.
        ok = openai.OpenAI(base_url=proxy.base_url, api_key="sk-c", max_retries=0).chat.completions.create(model="m", messages=MSG)
        assert ok.choices[0].message.content
        assert sorted(r["outcome"] for r in proxy.records()) == ["client_disconnected", "ok"]
    finally:
        fake.stop()


def test_a_body_in_many_small_chunks_arrives_whole(fake_openai, run_proxy) -> None:
    """Chunked upload in 4 KiB pieces (the proxy joins them once, in linear time; bench/body_read.py)."""
    proxy = run_proxy(upstream=fake_openai.base_url, max_body_bytes=8 * 1024 * 1024)
    filler = "x " * (2 * 1024 * 1024)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": filler + "end"}]}).encode()

    def pieces():
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    resp = httpx.post(proxy.base_url + "/chat/completions", content=pieces(), headers={"Authorization": "Bearer sk-c", "content-type": "application/json"})
    assert resp.status_code == 200, resp.text[:300]
    assert fake_openai.chat_requests[-1]["json"]["messages"][0]["content"] == filler + "end"
    (rec,) = proxy.records()
    assert json.loads(rec["request"])["messages"][0]["content"].endswith("end")
    too_big = b"{" + b" " * (9 * 1024 * 1024) + b"}"
    err = _err(httpx.post(proxy.base_url + "/chat/completions", content=iter([too_big[i : i + 65536] for i in range(0, len(too_big), 65536)]),
                          headers={"Authorization": "Bearer sk-c"}), 413)
    assert err["code"] == "request_too_large"
