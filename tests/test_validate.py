"""Validation of fine-tuning files: error keys per line, standalone CLI with a non-zero exit."""

from __future__ import annotations

import orjson
from protege.distill.datasets.validate import validate_jsonl
from typer.testing import CliRunner

from protege.cli import app

GOOD = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
TOOL_OK = {
    "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
}


def write(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines))
    return path


def test_valid_file_passes(tmp_path):
    rep = validate_jsonl(write(tmp_path / "ok.jsonl", [GOOD] * 9 + [TOOL_OK]))
    assert rep.ok and rep.examples == 10 and rep.valid_examples == 10


def test_error_keys_per_line(tmp_path):
    bad = [
        GOOD,  # 1 ok
        b"{not json",  # 2
        [1, 2],  # 3
        {"prompt": "x"},  # 4
        {"messages": [{"role": "user"}]},  # 5
        {"messages": [{"role": "user", "content": "u", "extra": 1}, {"role": "assistant", "content": "a"}]},  # 6
        {"messages": [{"role": "robot", "content": "u"}, {"role": "assistant", "content": "a"}]},  # 7
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},  # 8
        {"messages": [{"role": "user", "content": "u"}]},  # 9
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "weight": 2}]},  # 10
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]},  # 11
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]},  # 12
        {"messages": [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "a"}]},  # 13 (limit 50 below)
    ]
    rep = validate_jsonl(write(tmp_path / "bad.jsonl", bad), max_tokens=50)
    got = {(e.line, e.key) for e in rep.errors}
    assert got == {
        (2, "invalid_json"),
        (3, "data_type"),
        (4, "missing_messages_list"),
        (5, "message_missing_key"),
        (5, "example_missing_assistant_message"),
        (6, "message_unrecognized_key"),
        (7, "unrecognized_role"),
        (8, "missing_content"),
        (9, "example_missing_assistant_message"),
        (10, "invalid_weight"),
        (11, "tool_arguments_not_string"),
        (12, "tool_arguments_invalid_json"),
        (13, "too_many_tokens"),
    }
    assert rep.valid_examples == 1 and not rep.ok


def test_too_few_examples_and_blank_lines(tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_bytes(orjson.dumps(GOOD) + b"\n\n" + orjson.dumps(GOOD) + b"\n")
    rep = validate_jsonl(path)
    assert {(e.line, e.key) for e in rep.errors} == {(2, "empty_line"), (0, "too_few_examples")}


def test_dpo_format(tmp_path):
    ok = {"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "good"}],
          "non_preferred_output": [{"role": "assistant", "content": "bad"}]}
    bad = {"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "user", "content": "x"}],
           "non_preferred_output": []}
    rep = validate_jsonl(write(tmp_path / "dpo.jsonl", [ok] * 10 + [bad]))
    assert rep.format == "dpo"
    assert {(e.line, e.key) for e in rep.errors} == {(11, "invalid_preference_output")}


def test_cli_validate_exit_codes(tmp_path, store_db):
    runner = CliRunner()
    good = write(tmp_path / "ok.jsonl", [GOOD] * 10)
    res = runner.invoke(app, ["--db", store_db, "dataset", "validate", str(good)])
    assert res.exit_code == 0, res.output
    assert "10 examples" in res.output
    bad = write(tmp_path / "bad.jsonl", [GOOD] * 10 + [{"messages": [{"role": "user", "content": "u"}]}])
    res = runner.invoke(app, ["--db", store_db, "dataset", "validate", str(bad)])
    assert res.exit_code == 1
    assert f"{bad}:11: example_missing_assistant_message" in res.output
    res = runner.invoke(app, ["--db", store_db, "dataset", "validate", str(bad), "--json"])
    assert res.exit_code == 1
    assert orjson.loads(res.stdout)["error_counts"] == {"example_missing_assistant_message": 1}
    res = runner.invoke(app, ["--db", store_db, "dataset", "validate", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 1 and "no such file" in res.output
