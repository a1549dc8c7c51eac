"""Server-sent events: the pass-through filter and the reassembly of a finished completion.

On the request path only :class:`UsageFilter` runs, and only when Protege itself injected
``stream_options.include_usage`` (then the client must not see the extra usage chunk or the
``"usage": null`` keys). Reassembly runs later, in the capture writer's thread.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import orjson

_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')
_EVENT_END = re.compile(rb"\r?\n\r?\n")


class UsageFilter:
    """Removes what injecting ``include_usage`` added, event by event, keeping everything else byte-exact."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data
        out = []
        pos = 0
        for m in _EVENT_END.finditer(buf):
            out.append(self._event(buf[pos : m.start()], buf[m.start() : m.end()]))
            pos = m.end()
        self._buf = buf[pos:]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest

    @staticmethod
    def _event(event: bytes, sep: bytes) -> bytes:
        if b'"usage"' not in event:
            return event + sep
        if b"null" in event:
            stripped = _USAGE_NULL.sub(b"", event)
            if stripped != event:
                return stripped + sep
        # The usage chunk itself: {"choices": [], "usage": {...}}: the client did not ask for it.
        for line in event.splitlines():
            if line.startswith(b"data:"):
                try:
                    obj = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    return event + sep
                if isinstance(obj, dict) and obj.get("choices") == [] and obj.get("usage"):
                    return b""
        return event + sep


def iter_events(raw: bytes) -> Iterable[Any]:
    """Parsed ``data:`` payloads of an SSE body (``[DONE]`` and comments skipped)."""
    for line in raw.splitlines():
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            continue
        try:
            yield orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue


def reassemble(raw: bytes) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(chat.completion rebuilt from the chunks, error object sent mid-stream if any)."""
    completion: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    error = None
    for chunk in iter_events(raw):
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk and "choices" not in chunk:
            error = chunk
            continue
        if completion is None:
            completion = {
                "id": chunk.get("id"),
                "object": "chat.completion",
                "created": chunk.get("created"),
                "model": chunk.get("model"),
                "choices": [],
                "usage": None,
            }
        for key in ("model", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                completion[key] = chunk[key]
        if chunk.get("usage"):
            completion["usage"] = chunk["usage"]
        for ch in chunk.get("choices") or []:
            idx = ch.get("index", 0)
            cur = choices.get(idx)
            if cur is None:
                cur = choices[idx] = {
                    "index": idx,
                    "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": None},
                    "logprobs": None,
                    "finish_reason": None,
                    "_content": [],
                    "_refusal": [],
                    "_tools": {},
                }
            delta = ch.get("delta") or {}
            if delta.get("role"):
                cur["message"]["role"] = delta["role"]
            if delta.get("content"):
                cur["_content"].append(delta["content"])
            if delta.get("refusal"):
                cur["_refusal"].append(delta["refusal"])
            for tc in delta.get("tool_calls") or []:
                t = cur["_tools"].setdefault(
                    tc.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if tc.get("id"):
                    t["id"] = tc["id"]
                if tc.get("type"):
                    t["type"] = tc["type"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    t["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    t["function"]["arguments"] += fn["arguments"]
            if ch.get("logprobs"):
                lp = cur["logprobs"] or {"content": []}
                lp["content"].extend((ch["logprobs"] or {}).get("content") or [])
                cur["logprobs"] = lp
            if ch.get("finish_reason"):
                cur["finish_reason"] = ch["finish_reason"]
    if completion is not None:
        for idx in sorted(choices):
            cur = choices[idx]
            msg = cur["message"]
            if cur["_content"]:
                msg["content"] = "".join(cur.pop("_content"))
            else:
                cur.pop("_content")
                msg["content"] = msg["content"] if cur["_tools"] else (msg["content"] or "")
            if cur["_refusal"]:
                msg["refusal"] = "".join(cur["_refusal"])
            cur.pop("_refusal")
            tools = cur.pop("_tools")
            if tools:
                msg["tool_calls"] = [tools[i] for i in sorted(tools)]
            completion["choices"].append(cur)
    return completion, error


def completion_to_sse(completion: dict[str, Any], include_usage: bool) -> bytes:
    """A full chat.completion (from a local model) as the SSE stream OpenAI would have sent."""
    base = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    out = []

    def emit(choices: list, usage: Any = None, with_usage: bool = include_usage) -> None:
        chunk = dict(base, choices=choices)
        if with_usage:
            chunk["usage"] = usage
        out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")

    for ch in completion.get("choices") or []:
        msg = ch.get("message") or {}
        idx = ch.get("index", 0)
        emit([{"index": idx, "delta": {"role": msg.get("role", "assistant"), "content": ""}, "logprobs": None, "finish_reason": None}])
        if msg.get("content"):
            emit([{"index": idx, "delta": {"content": msg["content"]}, "logprobs": None, "finish_reason": None}])
        for i, tc in enumerate(msg.get("tool_calls") or []):
            emit([{"index": idx, "delta": {"tool_calls": [dict(tc, index=i)]}, "logprobs": None, "finish_reason": None}])
        emit([{"index": idx, "delta": {}, "logprobs": None, "finish_reason": ch.get("finish_reason") or "stop"}])
    if include_usage:
        emit([], completion.get("usage"))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)
