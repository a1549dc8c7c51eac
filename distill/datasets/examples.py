"""A captured completion turned into one fine-tuning example (OpenAI chat SFT format).

Requests carry fields that training files must not (``refusal: null``, ``annotations``, ``audio``,
``developer`` roles, ``null`` content next to tool calls); only what OpenAI's fine-tuning format
accepts is kept, and a corrected answer from feedback replaces the teacher's.
"""

from __future__ import annotations

from typing import Any

from protege.store.messages import content_text, first_message

_KEEP = ("role", "content", "name", "tool_calls", "tool_call_id", "weight", "function_call")


_PLAIN = frozenset(("role", "content", "name"))


def clean_message(m: dict[str, Any]) -> dict[str, Any]:
    # Fast path: most messages are already exactly {role, content} with a string content.
    if m.keys() <= _PLAIN and m.get("role") != "developer" and None not in m.values():
        return m
    out = {k: m[k] for k in _KEEP if k in m and m[k] is not None}
    if out.get("role") == "developer":
        out["role"] = "system"
    calls = out.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            {"id": c.get("id"), "type": c.get("type") or "function", "function": {"name": (c.get("function") or {}).get("name"), "arguments": (c.get("function") or {}).get("arguments")}}
            if isinstance(c, dict) else c
            for c in calls
        ]
    return out


def clean_input_messages(messages: list[Any]) -> list[dict[str, Any]]:
    return [clean_message(m) if isinstance(m, dict) else m for m in messages]


def assistant_message(response: dict[str, Any], correction: str | None = None) -> dict[str, Any] | None:
    """The teacher's answer (first choice), or the correction that replaces it."""
    if correction is not None:
        return {"role": "assistant", "content": correction}
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None  # not a chat completion's shape: counted as missing_choices, never fatal
    msg = choices[0].get("message") or {}
    if not isinstance(msg, dict):
        return None
    out: dict[str, Any] = {"role": "assistant"}
    content = msg.get("content")
    if content is not None:
        out["content"] = content
    if msg.get("tool_calls"):
        out["tool_calls"] = clean_message({"tool_calls": msg["tool_calls"]})["tool_calls"]
    elif msg.get("function_call"):
        out["function_call"] = msg["function_call"]
    return out


def answer_text(response: dict[str, Any], correction: str | None = None) -> str:
    """The correction, or the teacher's text (store.messages reads it)."""
    if correction is not None:
        return correction
    return content_text((first_message(response) or {}).get("content"))


__all__ = ["answer_text", "assistant_message", "clean_input_messages", "clean_message"]
