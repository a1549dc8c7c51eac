"""Preference pairs for DPO, from feedback.

Two sources: a corrected answer is preferred to the teacher's original, and for the same input an
accepted answer is preferred to a rejected one. Output is OpenAI's DPO format
(``{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}``);
DPO is text-only, so answers that are only tool calls are skipped.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import orjson

from protege.store.messages import content_text, first_message

from protege.distill.datasets.examples import clean_input_messages
from protege.distill.datasets.prune import strip_prompt
from protege.distill.datasets.scrub import scrub_messages, scrub_text


def _answer_text(response: dict[str, Any]) -> str | None:
    """The teacher's text (tool-call answers have none: a preference pair needs text on both sides)."""
    return content_text((first_message(response) or {}).get("content")) or None


def _input_key(messages: list[dict[str, Any]]) -> str:
    return hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _pair(inp: dict[str, Any], good: str, bad: str) -> dict[str, Any]:
    return {
        "input": inp,
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }


def preference_pairs(
    rows: Iterable[dict[str, Any]],
    *,
    scrub: bool = True,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """Pairs in capture order; each carries ``_ids`` (completion ids) for the link table."""
    pairs: list[dict[str, Any]] = []
    groups: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: {"yes": [], "no": []})
    inputs: dict[str, dict[str, Any]] = {}
    for row in rows:
        req = orjson.loads(row["request"])
        resp = orjson.loads(row["response"])
        messages = clean_input_messages(req.get("messages") or [])
        if system_prompt:
            messages = strip_prompt(messages, system_prompt)
        if scrub:
            scrub_messages(messages)
        inp: dict[str, Any] = {"messages": messages}
        if req.get("tools"):
            inp["tools"] = req["tools"]
        answer = _answer_text(resp)
        correction = row.get("correction")
        if correction and answer and correction.strip() != answer.strip():
            good, bad = (scrub_text(correction), scrub_text(answer)) if scrub else (correction, answer)
            pair = _pair(inp, good, bad)
            pair["_ids"] = [row["id"]]
            pairs.append(pair)
            continue
        accepted = row.get("accepted")
        if accepted is None or not answer:
            continue
        key = _input_key(messages)
        inputs.setdefault(key, inp)
        groups[key]["yes" if accepted else "no"].append((row["id"], scrub_text(answer) if scrub else answer))
    for key, g in groups.items():
        if not g["yes"] or not g["no"]:
            continue
        for i, (bad_id, bad) in enumerate(g["no"]):
            good_id, good = g["yes"][i % len(g["yes"])]
            if good.strip() == bad.strip():
                continue
            pair = _pair(inputs[key], good, bad)
            pair["_ids"] = [good_id, bad_id]
            pairs.append(pair)
    return pairs


__all__ = ["preference_pairs"]
