"""A fake OpenAI (and Azure OpenAI) chat server for tests: a real HTTP server on 127.0.0.1.

It answers like the real API where Protege depends on it: paths (OpenAI, Azure classic deployment
paths, Azure v1), 401 without a key, OpenAI-style error JSON, SSE streams chunked the way OpenAI
chunks them (role chunk, content chunks, tool-call deltas by index, a finish chunk, a usage chunk
with ``choices: []`` only when ``stream_options.include_usage`` is true, then ``data: [DONE]``).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
from aiohttp import web

_KEY_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
    "you're accessing the API from your browser and are prompted for a username and password. You can "
    "obtain an API key from https://platform.openai.com/account/api-keys."
)


class FakeError(Exception):
    """Raise from a reply function to make the fake answer with an OpenAI-style error."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class FakeOpenAI:
    root_url: str
    base_url: str
    requests: list[dict] = field(default_factory=list)
    _stop: Callable[[], None] | None = None
    # Stored Completions (``store: true`` requests, or seeded with ``add_stored``): id -> (object, input messages)
    stored: dict[str, tuple[dict, list[dict]]] = field(default_factory=dict)

    def add_stored(self, messages: list[dict], answer: str, *, model: str = "gpt-4o-mini-2024-07-18",
                   metadata: dict[str, str] | None = None, created: int | None = None, completion_id: str | None = None,
                   **request: Any) -> str:
        """Seed a stored completion as OpenAI keeps it (what ``chat.completions.list`` returns)."""
        cid = completion_id or f"chatcmpl-{secrets.token_hex(12)}"
        obj = _stored_object(cid, model, created or int(time.time()), {"role": "assistant", "content": answer},
                             metadata or {}, request, messages)
        self.stored[cid] = (obj, messages)
        return cid

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    @property
    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions") and r["method"] == "POST"]


def _tokens(text: Any) -> int:
    if isinstance(text, str):
        return len(text.split())
    if isinstance(text, list):
        return sum(_tokens(p.get("text", "")) for p in text if isinstance(p, dict))
    return 0


def _default_reply(body: dict) -> str:
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _stored_object(cid: str, model: str, created: int, message: dict, metadata: dict, request: dict, messages: list) -> dict:
    """A Stored Completions list item: the completion plus the request parameters OpenAI keeps beside it."""
    prompt = sum(_tokens(m.get("content")) for m in messages if isinstance(m, dict))
    done = _tokens(message.get("content") or "")
    return {
        "object": "chat.completion", "id": cid, "model": model, "created": created,
        "request_id": f"req_{secrets.token_hex(12)}", "tool_choice": request.get("tool_choice"),
        "usage": {"total_tokens": prompt + done, "completion_tokens": done, "prompt_tokens": prompt},
        "seed": request.get("seed"), "top_p": request.get("top_p", 1.0), "temperature": request.get("temperature", 1.0),
        "presence_penalty": request.get("presence_penalty", 0.0), "frequency_penalty": request.get("frequency_penalty", 0.0),
        "system_fingerprint": "fp_fake", "input_user": request.get("user"), "service_tier": "default",
        "tools": request.get("tools"), "metadata": dict(metadata),
        "choices": [{"index": 0, "message": {"content": message.get("content"), "role": "assistant",
                                              "tool_calls": message.get("tool_calls"), "function_call": None},
                     "finish_reason": "tool_calls" if message.get("tool_calls") else "stop", "logprobs": None}],
        "response_format": request.get("response_format"),
    }


def _store_message(cid: str, i: int, m: dict) -> dict:
    """An input message as ``chat.completions.messages.list`` returns it (id ``<completion>-<n>``)."""
    content = m.get("content")
    parts = None
    if isinstance(content, list):
        parts, content = content, None
    out = {"id": f"{cid}-{i}", "role": m.get("role"), "content": content, "name": m.get("name"), "content_parts": parts}
    for key in ("tool_calls", "tool_call_id"):
        if m.get(key) is not None:
            out[key] = m[key]
    return out


def _cursor_page(items: list[dict], request: web.Request) -> web.Response:
    """OpenAI's cursor pagination: ``after`` (an id), ``limit`` (default 20), ``order`` (default asc)."""
    order = request.query.get("order", "asc")
    if order not in ("asc", "desc"):
        return _error(400, f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.", param="order", code="invalid_value")
    try:
        limit = int(request.query.get("limit", 20))
    except ValueError:
        return _error(400, "Invalid 'limit': expected an integer.", param="limit")
    if not 1 <= limit <= 100:
        return _error(400, f"Invalid 'limit': integer below minimum value. Expected a value >= 1 and <= 100, but got {limit} instead.",
                      param="limit", code="integer_out_of_range")
    if order == "desc":
        items = list(reversed(items))
    after = request.query.get("after")
    if after:
        idx = next((i for i, it in enumerate(items) if it["id"] == after), None)
        if idx is None:
            return _error(404, f"No chat completion found with id '{after}'." if "-" not in after[9:] else f"No message found with id '{after}'.", param="after")
        items = items[idx + 1:]
    page = items[:limit]
    return _json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


def _error(status: int, message: str, type: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> web.Response:
    return _json(FakeError(status, message, type, code, param).body(), status)


_req_ids = itertools.count(1)


def _json(obj: Any, status: int = 200, option: int = 0) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj, option=option),
        status=status,
        content_type="application/json",
        headers={"x-request-id": f"req_{secrets.token_hex(12)}"},
    )


def start_fake_openai(
    reply: Callable[[dict], str | dict] | None = None, *, delay: float = 0.0, chunk_delay: float = 0.0,
    completion_id: str | None = None, sort_keys: bool = False, fields: Callable[[dict], dict] | None = None,
    linger: float = 0.0,
) -> FakeOpenAI:
    """Start the fake on an ephemeral port in a background thread; ``.stop()`` ends it.

    ``completion_id`` makes every completion carry that id, as local servers do (Ollama's
    ``chatcmpl-<0..998>``, ``"0"``); ``sort_keys`` writes JSON keys in alphabetical order, as
    llama.cpp's server and Azure OpenAI do (``choices`` before ``id``). ``fields(request_body)``
    returns top-level fields that replace those of a non-streamed answer, to play a misbehaving
    OpenAI-compatible server (``{"id": 123}``, ``{"usage": []}``). ``linger`` holds a stream open
    that long after ``data: [DONE]`` (the SDK stops reading at ``[DONE]``; the HTTP body ends later).
    """
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    reply = reply or _default_reply
    seen: list[dict] = []
    stored: dict[str, tuple[dict, list[dict]]] = {}

    async def record(request: web.Request) -> dict | None:
        raw = await request.read()
        body = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "json": body,
            }
        )
        return body

    def authorized(request: web.Request) -> bool:
        auth = request.headers.get("authorization", "")
        if auth.startswith("Basic "):  # OpenAI also takes the key as a Basic password (see _KEY_MISSING)
            import base64

            try:
                return bool(base64.b64decode(auth[6:]).decode().partition(":")[2])
            except ValueError:
                return False
        return bool(request.headers.get("api-key")) or (auth.startswith("Bearer ") and len(auth) > 7)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await record(request)
        if not authorized(request):
            return _error(401, _KEY_MISSING)
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        if "deployment" in request.match_info:
            body.setdefault("model", request.match_info["deployment"])
        if not body.get("model"):
            return _error(400, "you must provide a model parameter", param="model")
        if not isinstance(body.get("messages"), list):
            return _error(400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
        if delay:
            await asyncio.sleep(delay)
        try:
            out = reply(body)
        except FakeError as exc:
            return _json(exc.body(), exc.status)
        if isinstance(out, str):
            out = {"content": out}
        content = out.get("content")
        tool_calls = out.get("tool_calls")
        model = out.get("model") or f"{body['model']}-2024-07-18"
        finish = out.get("finish_reason") or ("tool_calls" if tool_calls else "stop")
        prompt_tokens = sum(_tokens(m.get("content")) for m in body["messages"] if isinstance(m, dict))
        completion_tokens = _tokens(content or "") + sum(
            _tokens(tc.get("function", {}).get("arguments", "")) for tc in tool_calls or []
        )
        usage = out.get("usage") or {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        }
        cid = completion_id if completion_id is not None else f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        if tool_calls:
            tool_calls = [
                {"id": tc.get("id") or f"call_{secrets.token_hex(8)}", "type": "function", "function": tc["function"]}
                for tc in tool_calls
            ]
        if body.get("store") is True:
            stored[cid] = (_stored_object(cid, model, created, {"content": content, "tool_calls": tool_calls},
                                          body.get("metadata") or {}, body, body["messages"]), body["messages"])
        if not body.get("stream"):
            message = {
                "role": "assistant", "content": content, "refusal": None, "annotations": [],
                "tool_calls": tool_calls, "function_call": None, "audio": None,
            }
            answer = {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake",
            }
            if fields is not None:
                answer.update(fields(body))
            return _json(answer, option=option)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream; charset=utf-8", "x-request-id": f"req_{secrets.token_hex(12)}"},
        )
        await resp.prepare(request)

        async def send(choices: list, usage_value: Any = None, last: bool = False) -> None:
            chunk: dict[str, Any] = {
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_fake", "choices": choices,
            }
            if include_usage:
                chunk["usage"] = usage_value
            await resp.write(b"data: " + orjson.dumps(chunk, option=option) + b"\n\n")
            if chunk_delay and not last:
                await asyncio.sleep(chunk_delay)

        def choice(delta: dict, finish_reason: str | None = None) -> list:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        try:
            await send(choice({"role": "assistant", "content": "", "refusal": None}))
            if content:
                words = content.split(" ")
                for i, word in enumerate(words):
                    await send(choice({"content": word if i == 0 else " " + word}))
            for idx, tc in enumerate(tool_calls or []):
                args = tc["function"].get("arguments", "")
                await send(choice({"tool_calls": [{"index": idx, "id": tc["id"], "type": "function",
                                                   "function": {"name": tc["function"]["name"], "arguments": ""}}]}))
                for piece in [args[i : i + 8] for i in range(0, len(args), 8)]:
                    await send(choice({"tool_calls": [{"index": idx, "function": {"arguments": piece}}]}))
            await send(choice({}, finish), last=not include_usage)
            if include_usage:
                await send([], usage, last=True)
            await resp.write(b"data: [DONE]\n\n")
            if linger:
                await asyncio.sleep(linger)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        return resp

    async def models(request: web.Request) -> web.Response:
        await record(request)
        if not authorized(request):
            return _error(401, _KEY_MISSING)
        data = [{"id": m, "object": "model", "created": 1686935002, "owned_by": "openai"} for m in ("gpt-4o-mini", "gpt-4o")]
        return _json({"object": "list", "data": data})

    async def embeddings(request: web.Request) -> web.Response:
        body = await record(request)
        if not authorized(request):
            return _error(401, _KEY_MISSING)
        if not isinstance(body, dict) or "input" not in body:
            return _error(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, float(len(str(x)))]} for i, x in enumerate(inputs)]
        n = sum(_tokens(str(x)) for x in inputs)
        return _json({"object": "list", "data": data, "model": body.get("model"), "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def list_stored(request: web.Request) -> web.Response:
        await record(request)
        if not authorized(request):
            return _error(401, _KEY_MISSING)
        filters = {k[9:-1]: v for k, v in request.query.items() if k.startswith("metadata[") and k.endswith("]")}
        model = request.query.get("model")
        items = [obj for obj, _ in sorted(stored.values(), key=lambda x: x[0]["created"])  # stable: insertion order within a second
                 if (not model or obj["model"] == model) and all(obj["metadata"].get(k) == v for k, v in filters.items())]
        return _cursor_page(items, request)

    async def get_stored(request: web.Request) -> web.Response:
        await record(request)
        if not authorized(request):
            return _error(401, _KEY_MISSING)
        hit = stored.get(request.match_info["cid"])
        if hit is None:
            return _error(404, f"No chat completion found with id '{request.match_info['cid']}'.", param="completion_id")
        return _json(hit[0])

    async def list_stored_messages(request: web.Request) -> web.Response:
        await record(request)
        if not authorized(request):
            return _error(401, _KEY_MISSING)
        cid = request.match_info["cid"]
        hit = stored.get(cid)
        if hit is None:
            return _error(404, f"No chat completion found with id '{cid}'.", param="completion_id")
        return _cursor_page([_store_message(cid, i, m) for i, m in enumerate(hit[1])], request)

    async def not_found(request: web.Request) -> web.Response:
        await record(request)
        return _error(404, f"Invalid URL ({request.method} {request.path})")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/openai/v1/chat/completions", chat)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/openai/v1/models", models)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", embeddings)
    for prefix in ("/v1", "/openai/v1"):
        app.router.add_get(prefix + "/chat/completions", list_stored)
        app.router.add_get(prefix + "/chat/completions/{cid}", get_stored)
        app.router.add_get(prefix + "/chat/completions/{cid}/messages", list_stored_messages)
    app.router.add_route("*", "/{tail:.*}", not_found)

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def _start() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(state["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=_run, name="fake-openai", daemon=True)
    thread.start()
    ready.wait(10)
    root = f"http://127.0.0.1:{state['port']}"

    def _stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return FakeOpenAI(root_url=root, base_url=root + "/v1", requests=seen, _stop=_stop, stored=stored)
