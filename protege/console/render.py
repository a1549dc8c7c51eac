"""A capture's request and response as something a person can read.

Messages keep their roles; text content is shown as text, tool calls as their function name with
pretty-printed arguments, tool results beside the call id they answer. Streamed answers are stored
reassembled (proxy/streaming.py), so they read like any other completion.
"""

from __future__ import annotations

from typing import Any

import orjson


def pretty_json(value: Any) -> str:
    """JSON text indented for reading; strings that hold JSON (tool arguments) are decoded first."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                out.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                out.append(f"[{part.get('type', 'part')}]")
        return "\n".join(out)
    return pretty_json(content)


def _tool_calls(calls: Any) -> list[dict[str, str]]:
    out = []
    for call in calls or []:
        if not isinstance(call, dict):
            continue
        fn = call.get("function") or {}
        out.append({"id": str(call.get("id") or ""), "name": str(fn.get("name") or call.get("type") or "tool"),
                    "arguments": pretty_json(fn.get("arguments") if fn.get("arguments") is not None else {})})
    return out


def message_view(msg: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": str(msg.get("role") or "?"),
        "name": msg.get("name"),
        "text": _text(msg.get("content")),
        "refusal": msg.get("refusal"),
        "tool_calls": _tool_calls(msg.get("tool_calls")),
        "tool_call_id": msg.get("tool_call_id"),
    }


def capture_view(record: dict[str, Any]) -> dict[str, Any]:
    """What the capture page shows: request messages, parameters, answer choices, raw JSON."""
    try:
        request = orjson.loads(record.get("request") or "{}")
    except orjson.JSONDecodeError:
        request = {}
    response = None
    if record.get("response"):
        try:
            response = orjson.loads(record["response"])
        except orjson.JSONDecodeError:
            response = None
    params = {k: v for k, v in request.items() if k not in ("messages", "metadata", "tools")}
    choices = []
    for choice in (response or {}).get("choices") or []:
        msg = choice.get("message") or {}
        choices.append({"index": choice.get("index", 0), "finish_reason": choice.get("finish_reason"), **message_view(msg)})
    return {
        "messages": [message_view(m) for m in request.get("messages") or [] if isinstance(m, dict)],
        "params": pretty_json(params) if params else "",
        "tools": [pretty_json(t) for t in request.get("tools") or []],
        "choices": choices,
        "usage": (response or {}).get("usage"),
        "request_json": pretty_json(request),
        "response_json": pretty_json(response) if response is not None else "",
        "error": pretty_json(record["error"]) if record.get("error") else "",
    }


__all__ = ["capture_view", "message_view", "pretty_json"]
