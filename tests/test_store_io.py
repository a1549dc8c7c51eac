"""JSONL import (three line shapes, per-line errors) and export (JSONL round trip, Parquet)."""

from __future__ import annotations

import duckdb
import orjson
import pytest

from protege.store import COLUMNS, Store, get_record, get_stored, insert_records, list_stored, record_from_completion
from protege.store.io import export_jsonl, export_parquet, import_jsonl


def chat_completion(i: int, **extra) -> dict:
    return {
        "id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1_735_689_600 + i, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"a{i}", "refusal": None},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        **extra,
    }


def write_lines(path, lines) -> None:
    path.write_bytes(b"".join((l if isinstance(l, bytes) else orjson.dumps(l)) + b"\n" for l in lines))


@pytest.fixture
def store(store_db, tmp_path):
    s = Store(store_db, data_dir=tmp_path / "data")
    yield s
    s.close()


def test_import_accepts_the_three_shapes(store, tmp_path):
    f = tmp_path / "in.jsonl"
    write_lines(f, [
        chat_completion(1, messages=[{"role": "user", "content": "q1"}], metadata={"env": "prod"}, temperature=0.3),
        chat_completion(2, request={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q2"}],
                                    "metadata": {"env": "dev"}}),
        {"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "q3"}], "metadata": {"team": "x"}},
         "response": chat_completion(3, model="gpt-4o")},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q4"},
                      {"role": "assistant", "content": "a4"}], "metadata": {"src": "ft"}},
    ])
    res = import_jsonl(store, f, default_model="my-model")
    assert (res.lines, res.imported, res.errors) == (4, 4, [])
    one = get_stored(store, "chatcmpl-1")
    assert one["metadata"] == {"env": "prod"} and one["temperature"] == 0.3
    assert "messages" not in orjson.loads(get_record(store, "chatcmpl-1")["response"])
    assert orjson.loads(get_record(store, "chatcmpl-2")["request"])["messages"][0]["content"] == "q2"
    assert get_stored(store, "chatcmpl-2")["metadata"] == {"env": "dev"}
    assert get_record(store, "chatcmpl-3")["model_requested"] == "gpt-4o"
    ft = list_stored(store, metadata={"src": "ft"}).data
    assert len(ft) == 1 and ft[0]["model"] == "my-model"
    assert ft[0]["choices"][0]["message"]["content"] == "a4"
    rec = get_record(store, ft[0]["id"])
    assert [m["content"] for m in orjson.loads(rec["request"])["messages"]] == ["s", "q4"]
    assert rec["source"] == "import" and rec["outcome"] == "ok"


def test_import_reports_bad_lines_and_keeps_going(store, tmp_path):
    f = tmp_path / "bad.jsonl"
    write_lines(f, [
        chat_completion(1, messages=[{"role": "user", "content": "q"}]),
        b"{not json",
        b"",
        [1, 2],
        chat_completion(5),  # no request
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"request": {"messages": [{"role": "user", "content": "q"}]}, "response": {"id": "x"}},
        chat_completion(8, messages=[{"role": "user", "content": "q"}], metadata="nope"),
        {"hello": "world"},
        chat_completion(10, messages=[{"role": "user", "content": "q"}]),
        chat_completion(11, messages=[{"role": "user", "content": "q"}], usage={"prompt_tokens": "many"}),
        chat_completion(12, messages=[{"role": "user", "content": "q"}], model=7),
    ])
    res = import_jsonl(store, f)
    assert res.imported == 2 and res.lines == 12 and res.error_count == 9
    by_line = dict(res.errors)
    assert sorted(by_line) == [2, 4, 5, 6, 7, 8, 9, 11, 12]
    assert by_line[11] == "`usage.prompt_tokens` has the wrong type (str)"
    assert "wrong type (int)" in by_line[12]
    assert "invalid JSON" in by_line[2]
    assert "expected a JSON object" in by_line[4]
    assert "needs the request" in by_line[5]
    assert "end with an assistant message" in by_line[6]
    assert "choices" in by_line[7]
    assert "metadata" in by_line[8]
    assert "not a chat completion" in by_line[9]
    assert res.as_dict()["errors"][0] == {"line": 2, "error": by_line[2]}


def test_import_batches_and_progress(store, tmp_path):
    f = tmp_path / "many.jsonl"
    write_lines(f, [chat_completion(i, messages=[{"role": "user", "content": str(i)}]) for i in range(250)])
    seen = []
    res = import_jsonl(store, f, batch_size=100, progress=seen.append)
    assert res.imported == 250
    assert sum(seen) == f.stat().st_size and len(seen) >= 3
    page = list_stored(store, limit=1000).data
    assert [o["id"] for o in page] == [f"chatcmpl-{i}" for i in range(250)]


def test_export_import_roundtrip(store, tmp_path):
    req = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
           "temperature": 0.2, "seed": 7, "user": "u1",
           "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
    recs = [record_from_completion(chat_completion(i), req, metadata={"env": "prod", "i": str(i)}, source="proxy",
                                   request_id=f"req_{i}") for i in range(5)]
    failed = record_from_completion(chat_completion(99), req) | {"outcome": "timeout", "response": None}
    insert_records(store, recs + [failed])
    out = tmp_path / "out.jsonl"
    assert export_jsonl(store, out) == 5  # only successful completions are chat.completion objects
    first = orjson.loads(out.read_bytes().splitlines()[0])
    assert first["object"] == "chat.completion" and first["messages"] == req["messages"]
    assert first["metadata"] == {"env": "prod", "i": "0"}

    other = Store(str(tmp_path / "other.duckdb"))
    res = import_jsonl(other, out)
    assert res.imported == 5 and not res.errors
    before = list_stored(store, limit=100).data
    after = list_stored(other, limit=100).data
    assert after == before  # the Stored Completions view is identical
    assert orjson.loads(get_record(other, "chatcmpl-0")["request"])["messages"] == req["messages"]
    other.close()


def test_export_filters(store, tmp_path):
    insert_records(store, [record_from_completion(chat_completion(i), None, metadata={"k": str(i % 2)}) for i in range(6)])
    out = tmp_path / "f.jsonl"
    assert export_jsonl(store, out, metadata={"k": "1"}, order="desc", limit=2) == 2
    assert [orjson.loads(l)["id"] for l in out.read_bytes().splitlines()] == ["chatcmpl-5", "chatcmpl-3"]
    assert export_jsonl(store, out, since=1_735_689_600 + 4) == 2


def test_export_parquet_has_every_column(store, tmp_path):
    insert_records(store, [record_from_completion(chat_completion(i), None, metadata={"k": "v"}) for i in range(3)])
    insert_records(store, [record_from_completion(chat_completion(9), None) | {"outcome": "timeout", "response": None}])
    out = tmp_path / "all.parquet"
    assert export_parquet(store, out) == 4
    con = duckdb.connect()
    cols = [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(out)]).fetchall()]
    assert cols == list(COLUMNS)
    assert con.execute("SELECT count(*) FROM read_parquet(?) WHERE outcome = 'timeout'", [str(out)]).fetchone()[0] == 1
    assert export_parquet(store, out, outcome="ok", metadata={"k": "v"}) == 3
