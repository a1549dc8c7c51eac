"""Passthrough bypasses (issue 8): spellings of the Stored Completions paths never reach the upstream
with the server's key. Raw HTTP (http.client sends the path exactly as written; the SDK would
normalise it), the real proxy on 127.0.0.1, the fake upstream recording what reached it."""

from __future__ import annotations

import http.client
import json

import openai
import pytest

SERVER_KEY = "sk-server-secret-key"
MSG = [{"role": "user", "content": "hello there"}]

BYPASSES = [
    "/v1/chat/completions/",
    "/v1//chat/completions",
    "//v1/chat/completions",
    "/v1/./chat/completions",
    "/v1/chat/./completions",
    "/v1/x/../chat/completions",
    "/v1/chat/completions/.",
    "/v1/chat/completions/chatcmpl-1/",
    "/v1/chat/completions//chatcmpl-1/messages",
    "/v1/chat/completions/chatcmpl-1/messages/",
    "/v1/chat%2Fcompletions",
    "/v1/chat/completions%2F",
    "/v1/%63hat/completions",
    "/v1/chat/%2e/completions",
    "/v1/chat%252Fcompletions",
    "/v1/chat/completions%252F",
    "/v1/Chat/Completions",
    "/v1/chat;x=1/completions",
    "/v1/chat\\completions",
    "/openai/v1/chat/completions/",
    "/openai/v1//chat/completions/chatcmpl-1",
    "/openai/chat/completions/",
    "/v1/chat/completions/chatcmpl-1/anything/else",
]


def raw(url: str, method: str, path: str, key: str | None = None, body: bytes | None = None) -> tuple[int, dict, bytes]:
    host, port = url[len("http://"):].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is not None:
        headers["content-type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


@pytest.fixture
def proxy(fake_openai, run_proxy):
    return run_proxy(upstream=fake_openai.base_url, upstream_api_key=SERVER_KEY, proxy_keys=["pk-user"], admin_keys=["ak-admin"])


@pytest.mark.parametrize("method", ["GET", "DELETE", "POST"])
def test_stored_api_spellings_never_reach_the_upstream(proxy, fake_openai, method) -> None:
    for path in BYPASSES:
        if method == "POST" and "chatcmpl-1" not in path:
            continue  # a POST there may be a chat create (covered below); POST .../{id} is the Stored update
        status, headers, body = raw(proxy.url, method, path, key="pk-user", body=b"{}" if method == "POST" else None)
        assert status in (401, 403, 404, 405), (method, path, status, body[:200])
        assert headers.get("content-type", "").startswith("application/json"), (path, headers)
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert fake_openai.requests == [], [r["path"] for r in fake_openai.requests]


def test_normalised_spellings_are_served_by_protege(proxy, fake_openai) -> None:
    # The list, read by an admin through a trailing slash, comes from our store, not the upstream's.
    for path in ("/v1/chat/completions/", "/v1//chat/completions", "/v1/x/../chat/completions/"):
        status, _, body = raw(proxy.url, "GET", path, key="ak-admin")
        assert status == 200 and json.loads(body)["object"] == "list", (path, body)
        assert raw(proxy.url, "GET", path, key="pk-user")[0] == 403
    # A create spelled oddly is a create: captured, forwarded to the real create path.
    req = json.dumps({"model": "m", "messages": MSG}).encode()
    for path in ("/v1//chat/completions", "/v1/chat/completions/", "/v1/./chat/completions"):
        status, _, body = raw(proxy.url, "POST", path, key="pk-user", body=req)
        assert status == 200 and json.loads(body)["object"] == "chat.completion", (path, body)
    assert [r["path"] for r in fake_openai.requests] == ["/v1/chat/completions"] * 3
    assert len(proxy.records()) == 3
    assert fake_openai.requests[0]["headers"]["authorization"] == f"Bearer {SERVER_KEY}"


def test_other_passthrough_paths_are_normalised_and_still_forwarded(proxy, fake_openai) -> None:
    for path in ("/v1/models", "/v1/models/", "/v1//models", "/v1/x/../models"):
        status, _, body = raw(proxy.url, "GET", path, key="pk-user")
        assert status == 200 and json.loads(body)["object"] == "list", (path, body)
    assert [r["path"] for r in fake_openai.requests] == ["/v1/models"] * 4
    # A literal "%" (double encoding) is sent on encoded, so the upstream decodes what we routed on.
    raw(proxy.url, "GET", "/v1/models/a%2520b", key="pk-user")
    assert fake_openai.requests[-1]["path"] == "/v1/models/a%20b"
    assert [m.id for m in openai.OpenAI(base_url=proxy.base_url, api_key="pk-user").models.list()]
