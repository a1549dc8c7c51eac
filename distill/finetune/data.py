"""Training rows for TRL from Protege's JSONL files (chat SFT examples, DPO pairs).

SFT examples become conversational *prompt/completion* rows: everything before the last assistant
turn is the prompt, that turn is the completion. TRL then masks the prompt out of the loss
(``completion_only_loss``), so the model is trained on the teacher's answers only, whatever the
chat template (SmolLM2's has no ``{% generation %}`` markers, which TRL's assistant-only loss needs).

Tool calls are kept only when the base model's chat template renders tools and tool calls
(:func:`template_supports_tools`); otherwise those examples are skipped and counted, and the job
says so. Pure-Python except for the tokenizer passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.distill.finetune.interface import FineTuneError


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text"))
    return ""


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """OpenAI message -> the shape HF chat templates read (text content; tool calls kept as sent)."""
    role = m.get("role")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": _text(m.get("content"))}
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {"type": "function", "function": {"name": (c.get("function") or {}).get("name"), "arguments": (c.get("function") or {}).get("arguments") or "{}"}}
            for c in m["tool_calls"]
            if isinstance(c, dict)
        ]
    if m.get("tool_call_id"):
        out["tool_call_id"] = m["tool_call_id"]
    if m.get("name") and role == "tool":
        out["name"] = m["name"]
    return out


def has_tool_traffic(obj: dict[str, Any], messages: list[dict[str, Any]]) -> bool:
    return bool(obj.get("tools")) or any(m.get("tool_calls") or m.get("function_call") or m.get("role") in ("tool", "function") for m in messages)


@dataclass
class Rows:
    """Rows ready for ``datasets.Dataset.from_list`` plus what was left out and why."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    tool_rows: int = 0  # rows kept that carry tools / tool calls
    skipped_tools: int = 0  # tool-call examples left out: the template cannot render them
    skipped_other: int = 0  # rows with nothing to learn (no assistant text)


def read_jsonl(path: str | Path, param: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a training file; a FineTuneError naming the
    line (and ``param``, the request field that named the file) for a line that is not a JSON object."""
    out = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                raise FineTuneError(f"{path} line {lineno}: invalid JSON", param=param, code="invalid_training_file") from None
            if not isinstance(obj, dict):
                raise FineTuneError(f"{path} line {lineno}: expected a JSON object", param=param, code="invalid_training_file")
            out.append((lineno, obj))
    return out


def sft_rows(path: str | Path, *, tools_ok: bool, param: str = "training_file") -> Rows:
    """Chat examples (``{"messages": [...], "tools"?: [...]}``) -> prompt/completion rows."""
    result = Rows()
    for lineno, obj in read_jsonl(path, param):
        messages = obj.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise FineTuneError(f"{path} line {lineno}: expected 'messages' (a list of messages)", param=param, code="invalid_training_file")
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            raise FineTuneError(f"{path} line {lineno}: no assistant message", param=param, code="invalid_training_file")
        if has_tool_traffic(obj, messages[: last + 1]):
            if not tools_ok or messages[last].get("function_call"):
                result.skipped_tools += 1
                continue
        answer = _message(messages[last])
        if not answer["content"] and not answer.get("tool_calls"):
            result.skipped_other += 1
            continue
        row: dict[str, Any] = {"prompt": [_message(m) for m in messages[:last]], "completion": [answer]}
        if tools_ok:
            row["tools"] = json.dumps(obj["tools"]) if obj.get("tools") else None
            result.tool_rows += int(has_tool_traffic(obj, messages[: last + 1]))
        result.rows.append(row)
    return result


def dpo_rows(path: str | Path, *, tools_ok: bool, param: str = "training_file") -> Rows:
    """Protege's / OpenAI's DPO pairs (``input``, ``preferred_output``, ``non_preferred_output``)
    -> TRL's conversational preference rows (``prompt``, ``chosen``, ``rejected``)."""
    result = Rows()
    for lineno, obj in read_jsonl(path, param):
        inp = obj.get("input")
        good, bad = obj.get("preferred_output"), obj.get("non_preferred_output")
        if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list) or not isinstance(good, list) or not isinstance(bad, list):
            raise FineTuneError(
                f"{path} line {lineno}: expected a DPO pair with 'input.messages', 'preferred_output' and 'non_preferred_output'",
                param=param,
                code="invalid_training_file",
            )
        messages = inp["messages"]
        if has_tool_traffic(inp, messages + good + bad) and not tools_ok:
            result.skipped_tools += 1
            continue
        chosen, rejected = [_message(m) for m in good], [_message(m) for m in bad]
        if not any(m["content"] for m in chosen) or not any(m["content"] for m in rejected):
            result.skipped_other += 1
            continue
        row: dict[str, Any] = {"prompt": [_message(m) for m in messages], "chosen": chosen, "rejected": rejected}
        if tools_ok:
            row["tools"] = json.dumps(inp["tools"]) if inp.get("tools") else None
        result.rows.append(row)
    return result


_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "protege_probe_tool", "description": "probe", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
}


def template_supports_tools(tokenizer: Any) -> bool:
    """True when the chat template renders both a tool definition and an assistant's tool call:
    checked by rendering, not by name, so any model family works."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    user = [{"role": "user", "content": "hi"}]
    try:
        plain = tokenizer.apply_chat_template(user, tokenize=False)
        with_tools = tokenizer.apply_chat_template(user, tools=[_PROBE_TOOL], tokenize=False)
        call = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "protege_probe_call", "arguments": "{}"}}]}],
            tools=[_PROBE_TOOL],
            tokenize=False,
        )
    except Exception:  # noqa: BLE001 - a template that raises on tools does not support them
        return False
    return "protege_probe_tool" in with_tools and with_tools != plain and "protege_probe_call" in call


def completion_texts(rows: list[dict[str, Any]]) -> list[str]:
    """The reference answer of each SFT row (validation exact match)."""
    return ["".join(m.get("content") or "" for m in r["completion"]) for r in rows]


__all__ = ["Rows", "completion_texts", "dpo_rows", "has_tool_traffic", "sft_rows", "template_supports_tools"]
