"""OpenAI chat completions on top of the batching generator: request checks, the prompt, the
response and stream chunk shapes, and tool calls.

Tool calls: a student trained with tools (manifest ``"tools": true``) gets the request's ``tools``
through its chat template, and its answer is parsed back into OpenAI ``tool_calls``. Parsed formats:
Hermes / SmolLM2 / Qwen style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (one
object or a JSON list of them per block), and an answer that is nothing but such a JSON object or
list. Anything else is plain content.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from protege.store.messages import content_text

from protege.distill.finetune.generation import DEFAULT_MAX_TOKENS, GenRequest, GenResult


class ChatRequestError(Exception):
    """A request this student cannot answer as asked (OpenAI 400 shape)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_value", status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


MAX_N = 8
_TOOL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: text content, ``developer`` read as ``system``,
    assistant tool calls with their arguments as objects (Hermes-style templates print them)."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise ChatRequestError("each message must be an object", param="messages", code="invalid_type")
        role = m.get("role")
        if role == "developer":
            role = "system"
        msg: dict[str, Any] = {"role": role, "content": content_text(m.get("content"))}
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict((c or {}).get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args)
                    except ValueError:
                        pass
                calls.append({"type": "function", "function": fn, "id": (c or {}).get("id")})
            msg["tool_calls"] = calls
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        if m.get("name"):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def _number(body: dict[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ChatRequestError(f"Invalid '{key}': expected a number between {lo:g} and {hi:g}.", param=key)
    return float(value)


def _int(body: dict[str, Any], key: str, lo: int, hi: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ChatRequestError(f"Invalid '{key}': expected an integer {bound}.", param=key)
    return value


def parse_params(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling parameters of an OpenAI chat request, checked (400 on what we cannot honour)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("'messages' must be a non-empty array", param="messages")
    max_tokens = _int(body, "max_completion_tokens", 1, None)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1, None)
    n = _int(body, "n", 1, MAX_N) or 1
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise ChatRequestError("Invalid 'stop': expected a string or an array of up to 4 strings.", param="stop")
    if body.get("logprobs"):
        raise ChatRequestError("logprobs are not supported by local students.", param="logprobs", code="unsupported_parameter")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ChatRequestError("Invalid 'seed': expected an integer.", param="seed")
    return {
        "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": _number(body, "temperature", 0.0, 2.0, 1.0),
        "top_p": _number(body, "top_p", 0.0, 1.0, 1.0),
        "n": n,
        "stop": [s for s in stops if s],
        "seed": seed,
    }


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content left over or None, OpenAI tool_calls) from a student's answer."""
    calls: list[dict[str, Any]] = []

    def add(obj: Any) -> bool:
        items = obj if isinstance(obj, list) else [obj]
        ok = False
        for it in items:
            if isinstance(it, dict) and isinstance(it.get("name"), str):
                args = it.get("arguments", it.get("parameters", {}))
                calls.append({
                    "id": f"call_{secrets.token_hex(12)}",
                    "type": "function",
                    "function": {"name": it["name"], "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)},
                })
                ok = True
        return ok

    if "<tool_call>" in text:
        for block in _TOOL_BLOCK.findall(text):
            try:
                add(json.loads(block))
            except ValueError:
                continue
        if calls:
            rest = _TOOL_BLOCK.sub("", text).strip()
            return (rest or None), calls
        return text, []
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            if add(json.loads(stripped)):
                return None, calls
        except ValueError:
            pass
    calls.clear()
    return text, []


def completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def build_completion(model: str, result: GenResult, *, tools: bool, fingerprint: str, cid: str | None = None, created: int | None = None) -> dict[str, Any]:
    choices = []
    for c in result.choices:
        content: str | None = c.text
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
        finish = c.finish_reason
        if tools:
            content, calls = parse_tool_calls(c.text)
            if calls:
                message["content"] = content
                message["tool_calls"] = calls
                finish = "tool_calls"
        choices.append({"index": c.index, "message": message, "logprobs": None, "finish_reason": finish})
    completion_tokens = sum(c.completion_tokens for c in result.choices)
    return {
        "id": cid or completion_id(),
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": result.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": fingerprint,
    }


def chunk(cid: str, created: int, model: str, fingerprint: str, choices: list[dict[str, Any]], usage: Any = None, with_usage_key: bool = False) -> dict[str, Any]:
    """One ``chat.completion.chunk`` as OpenAI sends it (``usage: null`` on every chunk when the
    client asked for usage, and a last chunk with ``choices: []`` and the usage)."""
    out: dict[str, Any] = {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "service_tier": "default", "system_fingerprint": fingerprint, "choices": choices,
    }
    if with_usage_key or usage is not None:
        out["usage"] = usage
    return out


def gen_request(params: dict[str, Any], prompt_ids: list[int], deadline: float | None) -> GenRequest:
    return GenRequest(
        prompt_ids=prompt_ids, max_new_tokens=params["max_tokens"], temperature=params["temperature"], top_p=params["top_p"],
        seed=params["seed"], stop=params["stop"], n=params["n"], deadline=deadline,
    )


__all__ = [
    "ChatRequestError",
    "build_completion",
    "chunk",
    "completion_id",
    "gen_request",
    "parse_params",
    "parse_tool_calls",
    "template_messages",
]
