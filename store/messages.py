"""What a captured message says, as text: the one reading of chat messages and answers for all of
Protege (evals score it, distill compares, trains and classifies on it).

These are about the shapes of captured records (OpenAI chat messages and ``chat.completion``
objects), so they live at the bottom layer where the proxy, evals and distill can all import them.
Before, six copies disagreed: content parts joined with ``""`` in some and ``" "`` in others, tool
calls serialised with sorted keys in one and name-first in another, and two label normalisers
mapped the same answer to different classes.

The rules, and why:

- **Content parts** are joined with ``""``, as the openai SDK's ``output_text`` joins text parts:
  the parts are one text split for transport, so no separator is invented. A part counts when it is
  an object with a string ``text`` (``text``, ``input_text``, ``output_text``); images, audio and
  refusals carry no ``text`` and are skipped.
- **Tool calls** (an answer with no text) become compact JSON of ``[{"arguments", "name"}]`` with
  sorted keys: only what the call means (call ids differ between two answers that do the same),
  in one canonical order, so the same call always reads the same; ``arguments`` stay the string
  the model sent.
- **Labels** (:func:`normalise_label`): one class per meaning, see its docstring.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import orjson

_WS = re.compile(r"\s+")
# Keys a classifier's JSON answer puts its class under, in the order they are looked for.
LABEL_KEYS = ("label", "category", "class", "intent", "route", "answer", "sentiment", "topic", "result")
_KEY_VALUE = re.compile(r"^\s*([A-Za-z][\w \-]{0,40}?)\s*[:=]\s*(.+?)\s*$", re.S)
_EDGE = " \t\r\n\"'`.,;:!?()[]{}<>*_"
_SCALAR = (str, int, float, bool)


def content_text(content: Any, sep: str = "") -> str:
    """The text of a message's ``content``: a string as is, text parts joined with ``sep``, else ``""``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return sep.join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def last_user_text(messages: Any, sep: str = "") -> str:
    """The text of the last ``user`` message of a request's ``messages`` (what a row previews)."""
    for msg in reversed(messages or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return content_text(msg.get("content"), sep)
    return ""


def tool_calls_text(calls: Any) -> str:
    """Tool calls as compact JSON, ``[{"arguments": ..., "name": ...}]`` with sorted keys."""
    out = []
    for call in calls or ():
        fn = (call.get("function") if isinstance(call, dict) else None) or {}
        out.append({"name": fn.get("name"), "arguments": fn.get("arguments")})
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS).decode() if out else ""


def message_text(message: dict[str, Any] | None) -> str:
    """What an answer says, as text: its content, or (with no content) its tool calls as JSON."""
    if not message:
        return ""
    text = content_text(message.get("content"))
    if text:
        return text
    return tool_calls_text(message.get("tool_calls"))


def first_message(response: str | bytes | dict[str, Any] | None) -> dict[str, Any] | None:
    """The first choice's message of a ``chat.completion`` (a dict, or its JSON text as stored)."""
    if response is None:
        return None
    obj = orjson.loads(response) if isinstance(response, (str, bytes)) else response
    choices = (obj.get("choices") if isinstance(obj, dict) else None) or []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    return message if isinstance(message, dict) else None


def answer_text(response: str | bytes | dict[str, Any] | None) -> str:
    """:func:`message_text` of a completion's first choice (``""`` when it has none)."""
    return message_text(first_message(response))


def normalise_label(text: str) -> str:
    """One class per meaning, so ``{"label": "Spam"}``, ``Category: spam.``, ``"spam"``, ``["spam"]``,
    ``label=spam`` and `` SPAM `` are all ``spam``.

    Unicode NFKC; a JSON object gives the first scalar under :data:`LABEL_KEYS` (or its only
    scalar value), a JSON list its only string; otherwise a one-line ``Key: value`` / ``key=value``
    gives the value. Then quotes, brackets and trailing punctuation go, whitespace collapses and case
    folds. (The union of the two rules it replaces: the agreement check's and the local student's.)
    """
    t = unicodedata.normalize("NFKC", text).strip()
    extracted = False
    if t[:1] in ("{", "["):
        try:
            obj = orjson.loads(t)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and obj:
            value = next((obj[k] for k in LABEL_KEYS if isinstance(obj.get(k), _SCALAR)), None)
            if value is None and len(obj) == 1 and isinstance(next(iter(obj.values())), _SCALAR):
                value = next(iter(obj.values()))
            if value is not None:
                t, extracted = str(value), True
        elif isinstance(obj, list) and len(obj) == 1 and isinstance(obj[0], str):
            t, extracted = obj[0], True
    if not extracted and "\n" not in t:
        m = _KEY_VALUE.match(t.strip(_EDGE))
        if m:
            t = m.group(2)
    return _WS.sub(" ", t.strip(_EDGE)).casefold()


__all__ = ["LABEL_KEYS", "answer_text", "content_text", "first_message", "last_user_text", "message_text", "normalise_label", "tool_calls_text"]
