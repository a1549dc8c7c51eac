"""Validation against OpenAI's fine-tuning formats, with an error report per line.

The checks follow the OpenAI cookbook's data-preparation notebook (same error keys, e.g.
``missing_content``), extended with what the current SFT guide allows (``tool`` messages,
``tool_calls``, content parts, ``weight``) and what it rejects (arguments that are not JSON strings,
weights other than 0/1, too few examples, examples over the base model's token limit). The same
function checks each example while a dataset is built and whole files standalone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from protege.distill.datasets.tokens import DEFAULT_MAX_TOKENS, estimate_messages

MIN_EXAMPLES = 10
ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id"})
EXAMPLE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
_PLAIN_KEYS = frozenset({"role", "content", "name"})
_PLAIN_ROLES = frozenset({"system", "user", "assistant"})
DPO_KEYS = frozenset({"input", "preferred_output", "non_preferred_output", "preferred_completion", "non_preferred_completion"})


@dataclass
class Issue:
    line: int
    key: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "key": self.key, "message": self.message}


@dataclass
class ValidationReport:
    path: str
    format: str = "chat"
    examples: int = 0
    valid_examples: int = 0
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_counts(self) -> dict[str, int]:
        return dict(Counter(e.key for e in self.errors))

    def to_dict(self, max_issues: int = 1000) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "ok": self.ok,
            "examples": self.examples,
            "valid_examples": self.valid_examples,
            "error_counts": self.error_counts(),
            "errors": [e.to_dict() for e in self.errors[:max_issues]],
            "warnings": [w.to_dict() for w in self.warnings[:max_issues]],
        }


def _check_tool_calls(calls: Any, line: int, where: str, out: list[Issue]) -> None:
    if not isinstance(calls, list) or not calls:
        out.append(Issue(line, "invalid_tool_calls", f"{where}: tool_calls must be a non-empty list"))
        return
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn.get("name"):
            out.append(Issue(line, "invalid_tool_calls", f"{where}: tool_calls[{j}] needs function.name"))
            continue
        args = fn.get("arguments")
        if not isinstance(args, str):
            out.append(Issue(line, "tool_arguments_not_string", f"{where}: tool_calls[{j}].function.arguments must be a JSON string"))
            continue
        try:
            orjson.loads(args)
        except orjson.JSONDecodeError:
            out.append(Issue(line, "tool_arguments_invalid_json", f"{where}: tool_calls[{j}].function.arguments is not valid JSON"))


def _content_ok(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content)
    if isinstance(content, list):
        return bool(content) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content)
    return False


def check_messages(messages: Any, line: int, out: list[Issue], where: str = "messages", need_assistant: bool = True) -> None:
    if not isinstance(messages, list) or not messages:
        out.append(Issue(line, "missing_messages_list", f"{where} must be a non-empty list"))
        return
    has_assistant = False
    for i, m in enumerate(messages):
        # Fast path: a plain text message with a known role and nothing else.
        if type(m) is dict and m.keys() <= _PLAIN_KEYS and type(m.get("content")) is str and m["content"]:
            role = m.get("role")
            if role in _PLAIN_ROLES:
                if role == "assistant":
                    has_assistant = True
                continue
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            out.append(Issue(line, "data_type", f"{at} is not an object"))
            continue
        if "role" not in m or ("content" not in m and "tool_calls" not in m and "function_call" not in m):
            out.append(Issue(line, "message_missing_key", f"{at} needs 'role' and 'content'"))
            continue
        extra = set(m) - MESSAGE_KEYS
        if extra:
            out.append(Issue(line, "message_unrecognized_key", f"{at} has unrecognized keys: {', '.join(sorted(extra))}"))
        role = m.get("role")
        if role not in ROLES:
            out.append(Issue(line, "unrecognized_role", f"{at} has unrecognized role {role!r}"))
            continue
        if role == "assistant":
            has_assistant = True
            if "weight" in m and (m["weight"] not in (0, 1) or isinstance(m["weight"], bool)):
                out.append(Issue(line, "invalid_weight", f"{at}.weight must be 0 or 1"))
        elif "weight" in m:
            out.append(Issue(line, "invalid_weight", f"{at}: weight is only allowed on assistant messages"))
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant":
                out.append(Issue(line, "invalid_tool_calls", f"{at}: only assistant messages carry tool_calls"))
            else:
                _check_tool_calls(calls, line, at, out)
        if calls is None and not m.get("function_call") and not _content_ok(m.get("content")):
            out.append(Issue(line, "missing_content", f"{at} has no content"))
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            out.append(Issue(line, "missing_tool_call_id", f"{at}: tool messages need tool_call_id"))
    if need_assistant and not has_assistant:
        out.append(Issue(line, "example_missing_assistant_message", "no assistant message"))


def check_example(obj: Any, line: int, max_tokens: int = DEFAULT_MAX_TOKENS, tokens: int | None = None) -> list[Issue]:
    """Errors for one SFT chat example (an empty list when it is valid)."""
    out: list[Issue] = []
    if not isinstance(obj, dict):
        return [Issue(line, "data_type", "line is not a JSON object")]
    if "messages" not in obj:
        return [Issue(line, "missing_messages_list", "no 'messages' list")]
    extra = set(obj) - EXAMPLE_KEYS
    if extra:
        out.append(Issue(line, "example_unrecognized_key", f"unrecognized keys: {', '.join(sorted(extra))}"))
    tools = obj.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools)):
        out.append(Issue(line, "invalid_tools", "tools must be a list of {type, function} objects"))
    check_messages(obj["messages"], line, out)
    if not out:
        n = tokens if tokens is not None else estimate_messages(obj["messages"])
        if n > max_tokens:
            out.append(Issue(line, "too_many_tokens", f"~{n} tokens, over the {max_tokens} limit (it would be truncated)"))
    return out


def _single_assistant(value: Any, line: int, where: str, out: list[Issue]) -> None:
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        out.append(Issue(line, "invalid_preference_output", f"{where} must be a list with one assistant message"))
        return
    m = value[0]
    if m.get("role") != "assistant":
        out.append(Issue(line, "invalid_preference_output", f"{where}[0] must be an assistant message"))
    elif not isinstance(m.get("content"), str) or not m["content"]:
        out.append(Issue(line, "missing_content", f"{where}[0] has no text content (DPO is text-only)"))


def check_dpo_example(obj: Any, line: int) -> list[Issue]:
    out: list[Issue] = []
    if not isinstance(obj, dict):
        return [Issue(line, "data_type", "line is not a JSON object")]
    inp = obj.get("input")
    if not isinstance(inp, dict):
        return [Issue(line, "missing_input", "no 'input' object")]
    check_messages(inp.get("messages"), line, out, where="input.messages", need_assistant=False)
    pref = obj.get("preferred_output", obj.get("preferred_completion"))
    non = obj.get("non_preferred_output", obj.get("non_preferred_completion"))
    _single_assistant(pref, line, "preferred_output", out)
    _single_assistant(non, line, "non_preferred_output", out)
    return out


def check_warnings(obj: dict[str, Any], line: int) -> list[Issue]:
    msgs = obj.get("messages") or []
    roles = [m.get("role") for m in msgs if isinstance(m, dict)]
    out = []
    if "user" not in roles:
        out.append(Issue(line, "missing_user_message", "no user message"))
    if roles and roles[-1] != "assistant":
        out.append(Issue(line, "last_message_not_assistant", "the last message is not an assistant message (adds no training signal)"))
    return out


def validate_jsonl(path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS, min_examples: int = MIN_EXAMPLES) -> ValidationReport:
    """Check a JSONL file line by line (chat SFT or DPO, detected from the first object)."""
    path = Path(path)
    report = ValidationReport(str(path))
    fmt: str | None = None
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                report.errors.append(Issue(line_no, "empty_line", "blank line (JSONL needs one object per line)"))
                continue
            report.examples += 1
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                key = "invalid_utf8" if "utf-8" in str(exc).lower() else "invalid_json"
                report.errors.append(Issue(line_no, key, f"not valid JSON: {exc}"))
                continue
            if fmt is None and isinstance(obj, dict):
                fmt = "dpo" if "input" in obj and "messages" not in obj else "chat"
            if fmt == "dpo":
                issues = check_dpo_example(obj, line_no)
            else:
                issues = check_example(obj, line_no, max_tokens=max_tokens)
                if not issues:
                    report.warnings.extend(check_warnings(obj, line_no))
            if issues:
                report.errors.extend(issues)
            else:
                report.valid_examples += 1
    report.format = fmt or "chat"
    if report.examples < min_examples:
        report.errors.append(Issue(0, "too_few_examples", f"{report.examples} examples; fine-tuning needs at least {min_examples}"))
    return report


__all__ = ["MIN_EXAMPLES", "Issue", "ValidationReport", "check_dpo_example", "check_example", "validate_jsonl"]
