"""Captured completions in a real DuckDB file: insert, filtered listing, paging, update, delete."""

from __future__ import annotations

import orjson
import pytest

from protege.store import (
    Store,
    count,
    count_records,
    delete_completion,
    get_record,
    get_stored,
    input_messages,
    insert_records,
    list_stored,
    record_from_completion,
    select_records,
    update_metadata,
)

HOSTILE = ["x' OR 1=1 --", "'; DROP TABLE completions; --", '"]', '["a","b"]', "a=b", "\\", "%", "_",
           "é🙂", "line\nbreak\x01", "</script>"]


def completion(i: int, *, model: str = "gpt-4o-mini", created: int | None = None, metadata: dict | None = None,
               **extra) -> dict:
    response = {
        "id": f"chatcmpl-{i}", "object": "chat.completion", "created": created or 1_700_000_000 + i, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    request = {"model": model, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{i}"}],
               "store": True, "temperature": 0.5, "metadata": metadata or {}}
    return record_from_completion(response, request, metadata=metadata or {}, source="proxy", **extra)


@pytest.fixture
def store(store_db, tmp_path):
    s = Store(store_db, data_dir=tmp_path / "data")
    yield s
    s.close()


def ids(page) -> list[str]:
    return [o["id"] for o in page.data]


def test_insert_and_get_roundtrip(store):
    insert_records(store, [completion(1, metadata={"env": "prod"}), completion(2)])
    assert count(store) == 2
    obj = get_stored(store, "chatcmpl-1")
    assert obj["object"] == "chat.completion"
    assert obj["metadata"] == {"env": "prod"}
    assert obj["temperature"] == 0.5 and obj["choices"][0]["message"]["content"] == "answer 1"
    rec = get_record(store, "chatcmpl-2")
    assert rec["prompt_tokens"] == 10 and rec["source"] == "proxy" and rec["outcome"] == "ok"
    assert get_stored(store, "nope") is None and get_record(store, "nope") is None
    msgs = input_messages(store, "chatcmpl-1")
    assert [m["id"] for m in msgs] == ["chatcmpl-1-0", "chatcmpl-1-1"] and msgs[1]["content"] == "q1"


def test_same_id_twice_latest_wins(store):
    insert_records(store, [completion(1, metadata={"v": "1"})])
    insert_records(store, [completion(1, metadata={"v": "2"})])
    assert get_stored(store, "chatcmpl-1")["metadata"] == {"v": "2"}


def test_list_order_limit_and_paging(store):
    insert_records(store, [completion(i, created=1_700_000_000 + (i // 2)) for i in range(10)])  # ties on created
    page = list_stored(store, limit=4)
    assert ids(page) == [f"chatcmpl-{i}" for i in range(4)] and page.has_more
    seen = []
    after = None
    while True:
        page = list_stored(store, limit=3, after=after)
        seen += ids(page)
        if not page.has_more:
            break
        after = page.data[-1]["id"]
    assert seen == [f"chatcmpl-{i}" for i in range(10)]
    desc = []
    after = None
    while True:
        page = list_stored(store, limit=3, after=after, order="desc")
        desc += ids(page)
        if not page.has_more:
            break
        after = page.data[-1]["id"]
    assert desc == [f"chatcmpl-{i}" for i in reversed(range(10))]


def test_list_filters_model_and_metadata(store):
    recs = [completion(i, model="gpt-4o" if i % 2 else "gpt-4o-mini", metadata={"team": f"t{i % 3}", "env": "prod"})
            for i in range(12)]
    insert_records(store, recs)
    assert ids(list_stored(store, model="gpt-4o", limit=100)) == [f"chatcmpl-{i}" for i in range(12) if i % 2]
    assert ids(list_stored(store, metadata={"team": "t1"}, limit=100)) == [f"chatcmpl-{i}" for i in range(12) if i % 3 == 1]
    both = list_stored(store, model="gpt-4o", metadata={"team": "t1", "env": "prod"}, limit=100)
    assert ids(both) == [f"chatcmpl-{i}" for i in range(12) if i % 2 and i % 3 == 1]
    assert ids(list_stored(store, metadata={"team": "t1", "env": "dev"})) == []
    # a key's value never matches another key
    assert ids(list_stored(store, metadata={"env": "t1"})) == []


def test_only_successful_captures_are_listed(store):
    ok = completion(1)
    failed = completion(2) | {"outcome": "upstream_error", "status_code": 500, "response": None, "error": "boom"}
    insert_records(store, [ok, failed])
    assert ids(list_stored(store)) == ["chatcmpl-1"]
    assert get_stored(store, "chatcmpl-2") is None
    assert get_record(store, "chatcmpl-2")["error"] == "boom"
    assert [r["id"] for r in select_records(store)] == ["chatcmpl-1", "chatcmpl-2"]
    assert count_records(store, outcome="upstream_error") == 1 and count_records(store, stored_only=True) == 1


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_metadata_is_data_not_sql(store, hostile):
    insert_records(store, [completion(1, metadata={hostile: hostile}), completion(2, metadata={"k": "v"})])
    assert ids(list_stored(store, metadata={hostile: hostile})) == ["chatcmpl-1"]
    # neither the key alone nor the value alone, nor an injection attempt, widens the match
    assert ids(list_stored(store, metadata={hostile: "v"})) == []
    assert ids(list_stored(store, metadata={"k": hostile})) == []
    assert ids(list_stored(store, metadata={"k": "v' OR 1=1 --"})) == []
    assert ids(list_stored(store, model=hostile)) == []
    assert get_stored(store, hostile) is None
    assert count(store) == 2  # nothing dropped
    assert get_stored(store, "chatcmpl-1")["metadata"] == {hostile: hostile}


def test_pair_encoding_cannot_be_forged(store):
    # key 'a","b' value 'c' must not match key 'a' value 'b","c'
    insert_records(store, [completion(1, metadata={'a","b': "c"})])
    assert ids(list_stored(store, metadata={"a": 'b","c'})) == []
    assert ids(list_stored(store, metadata={'a","b': "c"})) == ["chatcmpl-1"]


def test_update_metadata_replaces_filters(store):
    insert_records(store, [completion(1, metadata={"env": "prod"}), completion(2, metadata={"env": "prod"})])
    out = update_metadata(store, "chatcmpl-1", {"env": "staging", "x' OR 1=1 --": "y"})
    assert out["metadata"] == {"env": "staging", "x' OR 1=1 --": "y"}
    assert ids(list_stored(store, metadata={"env": "prod"})) == ["chatcmpl-2"]
    assert ids(list_stored(store, metadata={"env": "staging"})) == ["chatcmpl-1"]
    assert ids(list_stored(store, metadata={"x' OR 1=1 --": "y"})) == ["chatcmpl-1"]
    assert update_metadata(store, "chatcmpl-1", None)["metadata"] == {}
    assert ids(list_stored(store, metadata={"env": "staging"})) == []
    # the filter column follows too (its one-row-per-pair copy, completion_metadata, retired in v7)
    if store.dialect.name == "duckdb":
        rows = store.cursor().execute("SELECT id, meta_pairs FROM completions ORDER BY seq").fetchall()
        assert rows == [("chatcmpl-1", None), ("chatcmpl-2", ['["env","prod"]'])]
    else:  # PostgreSQL filters the jsonb column itself (GIN index), which the update replaced
        rows = store.cursor().execute("SELECT id, metadata = '{}'::jsonb FROM completions ORDER BY seq").fetchall()
        assert rows == [("chatcmpl-1", True), ("chatcmpl-2", False)]
    assert update_metadata(store, "missing", {"a": "b"}) is None


def test_delete(store):
    insert_records(store, [completion(1, metadata={"a": "b"}), completion(2)])
    assert delete_completion(store, "chatcmpl-1") is True
    assert delete_completion(store, "chatcmpl-1") is False
    assert ids(list_stored(store)) == ["chatcmpl-2"]
    # nothing of the deleted capture is left (its metadata lived on its row; completion_metadata retired in v7)
    assert store.cursor().execute("SELECT id FROM completions").fetchall() == [("chatcmpl-2",)]


def test_select_records_time_window(store):
    insert_records(store, [completion(i, created=1_700_000_000 + i * 100) for i in range(5)])
    got = [r["id"] for r in select_records(store, since=1_700_000_100, until=1_700_000_400, order="desc")]
    assert got == ["chatcmpl-3", "chatcmpl-2", "chatcmpl-1"]
    assert [r["id"] for r in select_records(store, limit=2)] == ["chatcmpl-0", "chatcmpl-1"]


def test_survives_reopen_and_seq_continues(tmp_path):
    path = str(tmp_path / "r.duckdb")
    s = Store(path)
    insert_records(s, [completion(1, metadata={"env": "prod"})])
    s.close()
    s = Store(path)
    insert_records(s, [completion(2, metadata={"env": "prod"})])
    assert ids(list_stored(s, metadata={"env": "prod"})) == ["chatcmpl-1", "chatcmpl-2"]
    seqs = [r["seq"] for r in select_records(s)]
    assert seqs[0] < seqs[1]
    s.close()


def test_metadata_values_stringified(store):
    rec = completion(1)
    rec["metadata"] = {"n": 3}
    insert_records(store, [rec])
    assert ids(list_stored(store, metadata={"n": "3"})) == ["chatcmpl-1"]
    assert orjson.loads(get_record(store, "chatcmpl-1")["metadata"]) == {"n": 3}
