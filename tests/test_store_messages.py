"""The one answer-text reading and label rule (protege.store.messages), and that every part of
Protege that reads answers uses it: evals scores the same text distill compares and trains on."""

from __future__ import annotations

import orjson
import pytest
from protege.distill.datasets import dpo, examples
from protege.distill.finetune import local_student
from protege.distill.auto.agreement import normalise_label as agreement_label
from protege.distill.auto.agreement import response_text
from protege.evals.generate import output_text
from protege.store.messages import answer_text, content_text, first_message, message_text, normalise_label

CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "pizza"}'}},
    {"id": "call_2", "type": "function", "function": {"arguments": "{}", "name": "now"}},
]


def _completion(message: dict) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def test_content_parts_join_without_a_separator_and_skip_parts_without_text() -> None:
    parts = [{"type": "text", "text": "Hello, "}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "input_text", "text": "world"}, {"type": "refusal", "refusal": "no"}, "junk"]
    assert content_text(parts) == "Hello, world"
    assert content_text("as is ") == "as is "
    assert content_text(None) == "" and content_text(42) == ""


def test_tool_calls_are_canonical_json_of_name_and_arguments() -> None:
    msg = {"role": "assistant", "content": None, "tool_calls": CALLS}
    want = '[{"arguments":"{\\"q\\": \\"pizza\\"}","name":"lookup"},{"arguments":"{}","name":"now"}]'
    assert message_text(msg) == want
    assert orjson.loads(want)[0]["arguments"] == '{"q": "pizza"}'  # the string the model sent, unparsed
    # the call ids and the upstream's field order do not change the text
    other = [{"id": "call_9", "type": "function", "function": {"arguments": '{"q": "pizza"}', "name": "lookup"}}, CALLS[1]]
    assert message_text({"content": "", "tool_calls": other}) == want
    # text wins over tool calls; nothing is ""
    assert message_text({"content": "ok", "tool_calls": CALLS}) == "ok"
    assert message_text({"content": None}) == "" and message_text(None) == ""


def test_every_reader_of_answers_agrees() -> None:
    for msg in ({"role": "assistant", "content": None, "tool_calls": CALLS},
                {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "plain"}):
        completion = _completion(msg)
        want = message_text(msg)
        assert output_text(msg) == want  # what evals scores
        assert response_text(completion) == want == answer_text(orjson.dumps(completion).decode())  # what agreement compares
    text_only = _completion({"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
    assert examples.answer_text(text_only) == "ab" and dpo._answer_text(text_only) == "ab"
    # training text is the content only: a tool-call answer has no text for a preference pair
    assert dpo._answer_text(_completion({"content": None, "tool_calls": CALLS})) is None
    assert examples.answer_text(text_only, correction="fixed") == "fixed"
    assert first_message({"choices": []}) is None and answer_text(None) == ""


@pytest.mark.parametrize("text", [
    '{"label": "Spam"}', "Category: spam.", "  SPAM ", '"spam"', "label=spam", '{"x": "spam"}', '["spam"]',
    '{"category": "spam", "confidence": 0.9}', '{"topic": "spam"}', "Topic: spam", "**spam**", "ＳＰＡＭ", "'spam'!",
])
def test_one_label_rule(text: str) -> None:
    assert normalise_label(text) == "spam"
    assert agreement_label(text) == local_student.normalise_label(text) == "spam"  # the same function everywhere


def test_label_rule_keeps_what_is_not_a_key_value_or_json() -> None:
    assert normalise_label("Tech  Support") == "tech support"
    assert normalise_label("line one: x\nline two") == "line one: x line two"  # multi-line text is not a "Key: value"
    assert normalise_label("{not json") == "not json"
    assert normalise_label('{"label": {"nested": 1}, "class": "b"}') == "b"  # the first scalar under a label key
    assert normalise_label('{"a": "x", "b": "y"}') not in ("x", "y")  # no label key and two values: no class picked
    assert normalise_label("true") == normalise_label('{"label": true}') == "true"


def test_last_user_text_is_the_last_user_turn_as_the_report_and_the_console_show_it() -> None:
    from protege.store.messages import last_user_text
    from protege.store.traffic import _last_user_text

    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url"}, {"type": "text", "text": "at\n  this"}]},
        {"role": "assistant", "content": None},
        "not a message",
    ]
    assert last_user_text(messages) == "lookat\n  this"  # the eval report's input column: parts joined with ""
    assert _last_user_text(orjson.dumps({"messages": messages}).decode()) == "look at this"  # the console's preview
    assert _last_user_text(orjson.dumps({"messages": [{"role": "user", "content": "x" * 200}]}).decode()) == "x" * 159 + "…"
    assert last_user_text([{"role": "assistant", "content": "no user"}]) == "" and last_user_text(None) == ""
    assert _last_user_text("not json") == ""
