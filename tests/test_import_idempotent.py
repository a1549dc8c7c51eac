"""Import is idempotent (the same completion twice is stored once), a conflicting id gets a new one and
is reported, and migration 5 gives the duplicate ids an older store already holds fresh ones."""

from __future__ import annotations

import json
import os

import duckdb
import orjson
import pytest
from typer.testing import CliRunner

from protege.cli import app
from protege.store import Store, count, get_record, get_stored, input_messages, list_stored
from protege.store.feedback import add_feedback, list_feedback
from protege.store.io import import_jsonl
from protege.store.migrations import migrate

runner = CliRunner()


def line(cid: str, question: str, answer: str, created: int = 1_735_689_600) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "messages": [{"role": "user", "content": question}],
    }


def write(path, lines) -> None:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray protege.toml
    for key in [k for k in os.environ if k.startswith("PROTEGE_")]:
        monkeypatch.delenv(key)


def test_importing_twice_stores_once(tmp_path, store_db):
    f = tmp_path / "a.jsonl"
    ft = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}  # no id, no created
    write(f, [line("chatcmpl-1", "q1", "a1"), line("chatcmpl-2", "q2", "a2"), ft, line("chatcmpl-1", "q1", "a1")])
    store = Store(store_db)
    try:
        first = import_jsonl(store, f)
        assert (first.imported, first.skipped, first.reided_count) == (3, 1, 0)  # the repeated line, once
        second = import_jsonl(store, f, batch_size=1)
        assert (second.imported, second.skipped, second.reided_count) == (0, 4, 0)
        assert count(store) == 3
        assert get_record(store, "chatcmpl-1")["upstream_id"] == "chatcmpl-1"
    finally:
        store.close()


def test_a_conflicting_id_gets_a_new_one_and_is_reported(tmp_path, store_db):
    db = store_db
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write(a, [line("0", "is the pizza good?", "yes")])
    write(b, [line("0", "is the soup good?", "no"), line("0", "is the cake good?", "maybe")])  # "0", as some servers say
    r = runner.invoke(app, ["--db", str(db), "completions", "import", str(a)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--db", str(db), "completions", "import", str(b)])
    assert r.exit_code == 0, r.output
    assert "imported 2 of 2 lines" in r.stdout and "2 with a new id" in r.stdout
    notes = r.stderr.splitlines()
    assert len(notes) == 2 and notes[0].startswith("note: line 1: id 0 is taken by a different completion; imported as chatcmpl-")
    new_ids = [n.rsplit(" ", 1)[1] for n in notes]
    r = runner.invoke(app, ["--db", str(db), "completions", "import", str(b), "--json"])  # again: nothing new
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout)
    assert (body["imported"], body["skipped_duplicates"], body["reided"], body["reided_ids"]) == (0, 2, 0, [])
    r = runner.invoke(app, ["--db", str(db), "completions", "show", new_ids[0]])
    assert r.exit_code == 0 and "upstream id  0\n" in r.stdout
    store = Store(db)
    try:
        assert count(store) == 3
        assert get_stored(store, "0")["choices"][0]["message"]["content"] == "yes"
        assert [input_messages(store, i)[0]["content"] for i in new_ids] == ["is the soup good?", "is the cake good?"]
        assert [get_record(store, i)["upstream_id"] for i in new_ids] == ["0", "0"]
    finally:
        store.close()


V4_INSERT = (
    "INSERT INTO completions (seq, id, created, started_at, request, response, metadata, outcome, source, paired_with) "
    "VALUES (?, ?, ?, ?, ?, ?, '{}', 'ok', ?, ?)"
)


def v4_row(conn, seq: int, cid: str, question: str, source: str = "proxy", paired_with: str | None = None) -> None:
    """A row as a version-4 release wrote it (plain SQL, no help from today's code)."""
    request = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": question}]}).decode()
    response = orjson.dumps({"id": cid, "object": "chat.completion", "created": 1_700_000_000, "model": "m",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}).decode()
    conn.execute(V4_INSERT, [seq, cid, 1_700_000_000, 1_700_000_000.0 + seq, request, response, source, paired_with])


# Upgrading a DuckDB file a version-4 release wrote: PostgreSQL stores came after migration 5.
@pytest.mark.backends("duckdb")
def test_migration_gives_old_duplicates_fresh_ids(tmp_path, backend):
    path = str(tmp_path / "v4.duckdb")
    conn = duckdb.connect(path)
    assert migrate(conn, target=4) == 4
    v4_row(conn, 1, "chatcmpl-123", "first")
    v4_row(conn, 2, "chatcmpl-123", "second")
    v4_row(conn, 3, "chatcmpl-123", "third", source="shadow", paired_with="chatcmpl-123")  # the student's answer to "second"
    v4_row(conn, 4, "chatcmpl-123", "fourth")
    v4_row(conn, 5, "chatcmpl-9", "unique")
    # feedback given while only the first two existed: it was attached to "second" (seq 2)
    conn.execute("INSERT INTO feedback (id, completion_id, completion_seq, created_at, correction) "
                 "VALUES ('fb_1', 'chatcmpl-123', 2, 1700000000, 'fixed')")
    conn.execute("INSERT INTO dataset_completions VALUES ('ds_1', 1, 'chatcmpl-123', 'train')")
    conn.close()

    store = Store(path)
    try:
        rows = store.cursor().execute("SELECT seq, id, upstream_id, paired_with FROM completions ORDER BY seq").fetchall()
        ids = {seq: cid for seq, cid, _u, _p in rows}
        assert len(set(ids.values())) == 5  # unique, old rows too
        assert ids[4] == "chatcmpl-123" and ids[5] == "chatcmpl-9"  # the newest keeps its id
        assert all(ids[s].startswith("chatcmpl-") and ids[s] != "chatcmpl-123" for s in (1, 2, 3))
        assert [u for _s, _i, u, _p in rows] == ["chatcmpl-123"] * 4 + ["chatcmpl-9"]
        assert rows[2][3] == ids[2]  # the shadow answer points at the capture it answered
        fb = list_feedback(store).data
        assert [f["completion_id"] for f in fb] == [ids[2]]
        assert store.cursor().execute("SELECT completion_id FROM dataset_completions").fetchall() == [(ids[1],)]
        # the Stored API now reaches each of them
        assert [input_messages(store, ids[s])[0]["content"] for s in (1, 2, 4)] == ["first", "second", "fourth"]
        assert [o["id"] for o in list_stored(store, limit=100).data] == [ids[s] for s in (1, 2, 3, 4, 5)]
        assert add_feedback(store, ids[1], score=1.0)["completion_id"] == ids[1]
    finally:
        store.close()


def test_resolve_ids_for_records_that_bring_their_own_ids(store_db):
    """What a spool reload needs: loading the same records again adds nothing; a record from a release
    before minted ids whose id is taken by another completion gets a fresh one; upstream_id is kept."""
    from protege.store import insert_records, record_from_completion
    from protege.store.ids import resolve_ids

    def rec(cid: str, question: str, **extra) -> dict:
        resp = {"id": cid, "object": "chat.completion", "created": 1_700_000_000, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
        return record_from_completion(resp, {"model": "m", "messages": [{"role": "user", "content": question}]},
                                      source="proxy", **extra)

    store = Store(store_db)
    try:
        minted = rec("chatcmpl-minted", "a", upstream_id="0")
        failed = rec("chatcmpl-failed", "b") | {"outcome": "timeout", "response": None}
        first = resolve_ids(store, [minted, failed])
        assert (len(first.records), first.skipped, first.reided) == (2, [], [])
        insert_records(store, first.records)
        old = rec("0", "c")  # a pre-upgrade spool record: the upstream's id, which the first one also had
        again = resolve_ids(store, [rec("chatcmpl-minted", "a", upstream_id="0"),
                                    rec("chatcmpl-failed", "b") | {"outcome": "timeout", "response": None}, old])
        assert again.skipped == [0, 1] and [r["request"] for r in again.records] == [old["request"]]
        assert again.reided == [] and again.records[0]["id"] == "0"  # "0" names no capture yet: it stays
        insert_records(store, again.records)
        clash = resolve_ids(store, [rec("0", "d")])
        assert clash.reided and clash.reided[0][1] == "0" and clash.records[0]["upstream_id"] == "0"
        assert get_record(store, "chatcmpl-minted")["upstream_id"] == "0"
    finally:
        store.close()
