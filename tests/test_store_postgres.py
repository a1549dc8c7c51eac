"""The PostgreSQL store on a real server: what only it has (several writers on one database,
numbers from the database, jsonb metadata and its index, libpq credentials, a server that goes
away under the capture writer). The behaviour both backends share is tested by the store tests
parameterised over ``store_db``."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from protege.store import (
    SCHEMA_VERSION,
    CaptureWriter,
    SchemaTooNewError,
    Store,
    count,
    insert_records,
    iter_records,
    list_stored,
    record_from_completion,
)
from tests import postgres

pytestmark = pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")


def rec(i: int, metadata: dict | None = None) -> dict:
    response = {"id": f"up-{i}", "object": "chat.completion", "created": 1_700_000_000 + i, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"a{i}"}, "finish_reason": "stop"}]}
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
    return record_from_completion(response, request, metadata=metadata or {"n": str(i)}, source="proxy", id=f"chatcmpl-{i}")


class Cap:
    def __init__(self, i: int) -> None:
        self.i = i

    def to_record(self) -> dict:
        r = rec(self.i)
        r["id"] = f"chatcmpl-{self.i}"
        r["upstream_id"] = f"up-{self.i}"
        return r


@pytest.fixture
def db(postgres_server) -> str:
    return postgres_server.database()


def test_two_stores_on_one_database_never_share_a_seq(db, tmp_path):
    # Two replicas (two Store objects, as two processes would open it) capture at once: every seq
    # comes from the database's sequence, so none repeats and none is lost.
    a, b = Store(db, data_dir=tmp_path / "a"), Store(db, data_dir=tmp_path / "b")
    errors: list[BaseException] = []

    def capture(store: Store, base: int) -> None:
        try:
            for k in range(20):
                insert_records(store, [rec(base + 10 * k + j) for j in range(10)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=capture, args=(a, 0)), threading.Thread(target=capture, args=(b, 100_000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    seqs = [r["seq"] for r in iter_records(a)]
    assert len(seqs) == 400 and len(set(seqs)) == 400
    # a process counter would have started both at 1; the database's sequence hands out each once
    assert set(a.next_seqs(3)).isdisjoint(seqs) and a.next_seqs(1)[0] > max(seqs)
    assert count(b) == 400  # and each replica reads what the other wrote
    a.close()
    b.close()


def test_replicas_starting_together_migrate_once(db, tmp_path):
    stores: list[Store] = []
    errors: list[BaseException] = []

    def open_one(i: int) -> None:
        try:
            stores.append(Store(db, data_dir=tmp_path / str(i)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == 4
    versions = stores[0].cursor().execute("SELECT version FROM protege_schema ORDER BY version").fetchall()
    assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))
    assert all(s.schema_version == SCHEMA_VERSION for s in stores)
    for s in stores:
        s.close()


def test_newer_schema_is_refused(db, tmp_path):
    Store(db, data_dir=tmp_path).close()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO protege_schema (version, name) VALUES (%s, 'from the future')", [SCHEMA_VERSION + 1])
    with pytest.raises(SchemaTooNewError):
        Store(db, data_dir=tmp_path)


def test_metadata_is_jsonb_and_its_filter_uses_the_index(db, tmp_path):
    store = Store(db, data_dir=tmp_path)
    insert_records(store, [rec(i, {"env": "prod" if i % 2 else "dev", "i": str(i)}) for i in range(200)])
    cur = store.cursor()
    assert cur.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'completions' AND column_name = 'metadata'"
    ).fetchone() == ("jsonb",)
    assert [r["id"] for r in list_stored(store, metadata={"i": "7"}).data] == ["chatcmpl-7"]
    # The Stored API's filter is what the GIN index serves (the planner picks it once a scan costs more).
    from protege.store import completion_filter

    where, params = completion_filter(metadata={"i": "7"}, stored_only=True, dialect=store.dialect)
    cur.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in cur.execute(f"EXPLAIN SELECT c.id FROM completions c WHERE {where}", params).fetchall())
    assert "completions_metadata" in plan
    store.close()


def test_credentials_come_from_libpq_variables(postgres_server, tmp_path, monkeypatch):
    # No user in the URL: libpq's PGUSER names it (PGPASSWORD / PGPASSFILE work the same way);
    # Protege passes the URL through and writes nothing.
    url = postgres_server.database()
    bare = url.replace(f"{postgres.SUPERUSER}@", "")
    monkeypatch.setenv("PGUSER", postgres.SUPERUSER)
    store = Store(bare, data_dir=tmp_path)
    assert store.schema_version == SCHEMA_VERSION
    store.close()
    assert not any(tmp_path.rglob("*"))  # nothing written beside it
    monkeypatch.setenv("PGUSER", "nobody-such")
    with pytest.raises(psycopg.OperationalError):
        Store(bare, data_dir=tmp_path)


def test_a_nul_in_metadata_does_not_fail_the_batch(db, tmp_path):
    # jsonb cannot hold U+0000 (DuckDB's VARCHAR can): the capture is kept, the NUL replaced by
    # U+FFFD, and the rest of its batch goes in with it.
    store = Store(db, data_dir=tmp_path)
    insert_records(store, [rec(1, {"k": "a\x00b"}), rec(2)])
    assert count(store) == 2
    assert [r["id"] for r in list_stored(store, metadata={"k": "a\ufffdb"}).data] == ["chatcmpl-1"]
    store.close()


def test_read_only_store_refuses_writes(db, tmp_path):
    Store(db, data_dir=tmp_path).close()
    ro = Store(db, data_dir=tmp_path, read_only=True)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        insert_records(ro, [rec(1)])
    assert count(ro) == 0
    ro.close()


def test_server_gone_captures_are_journaled_and_stored_once(tmp_path):
    # A server of its own, stopped under a running capture writer: captures submitted while it is
    # down are kept (journal, then spool, unnumbered since the sequence cannot be reached) and
    # stored exactly once when it is back.
    server = postgres.PostgresServer()
    try:
        url = server.database()
        store = Store(url, data_dir=tmp_path / "data")
        w = CaptureWriter(store, batch_size=5, flush_interval=0.01).start()
        for i in range(5):
            w.submit(Cap(i))
        assert w.flush(10) and count(store) == 5
        server.pause()
        for i in range(5, 12):
            w.submit(Cap(i))
        assert w.flush(20)
        assert w.spooled == 7 and w.captured == 5
        w.close()
        store.close()
        server.resume()
        store = Store(url, data_dir=tmp_path / "data")
        w = CaptureWriter(store, flush_interval=0.01).start()
        assert w.recovered == 7
        w.close()
        got = [r["id"] for r in iter_records(store)]
        assert sorted(got, key=lambda x: int(x.split("-")[1])) == [f"chatcmpl-{i}" for i in range(12)]
        seqs = [r["seq"] for r in iter_records(store)]
        assert len(set(seqs)) == 12
        store.close()
    finally:
        server.stop()


def test_a_stuck_database_never_holds_up_the_journal(db, tmp_path):
    # Another session holds the capture sequence locked (nextval waits): the journal thread must
    # not wait on it (it used to number captures there, so memory filled and captures were dropped);
    # captures are journaled and let go from memory, and stored once the lock goes.
    store = Store(db, data_dir=tmp_path / "data")
    seq_name = store.cursor().execute("SELECT pg_get_serial_sequence('completions', 'seq')").fetchone()[0]
    blocker = psycopg.connect(db)
    blocker.execute(f"ALTER SEQUENCE {seq_name} CACHE 1")  # takes the sequence's lock until commit
    try:
        w = CaptureWriter(store, max_queue=5, batch_size=2, flush_interval=0.01).start()
        most_in_memory = 0
        for i in range(30):
            w.submit(Cap(i))
            most_in_memory = max(most_in_memory, w._mem_count)
            # The journal thread lets captures go from memory while the database waits; wait for it
            # (a loaded machine may not run it within a fixed sleep, and a full queue drops, rightly):
            # a journal thread stuck on the database never empties memory, and the wait times out.
            until = time.monotonic() + 5
            while w._mem_count >= 4 and time.monotonic() < until:
                time.sleep(0.005)
        assert w.dropped == 0 and w.spooled == 0
        assert most_in_memory <= 5 and count(store) == 0
    finally:
        blocker.commit()
        blocker.close()
    assert w.close(timeout=20)
    assert sorted(int(r["id"].split("-")[1]) for r in iter_records(store)) == list(range(30))
    store.close()


def test_upstream_id_lookups_use_an_index(db, tmp_path):
    # Migration 8 (PostgreSQL only): the import's idempotence looks captures up by upstream id.
    store = Store(db, data_dir=tmp_path)
    insert_records(store, [rec(i, {}) for i in range(50)])
    cur = store.cursor()
    cur.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in cur.execute("EXPLAIN SELECT seq FROM completions WHERE upstream_id = 'up-7'").fetchall())
    assert "completions_upstream_id" in plan
    store.close()


def test_session_settings_keep_the_urls_own_options(db, tmp_path):
    """Protege's session settings (temp_buffers, for a dataset build's temporary tables; read-only)
    are added to the options a URL gives, not put in their place."""
    url = db + "?options=-c%20work_mem%3D5MB"
    for read_only in (False, True):
        s = Store(url, data_dir=tmp_path, read_only=read_only)
        cur = s.cursor()
        assert cur.execute("SHOW work_mem").fetchone()[0] == "5MB"
        assert cur.execute("SHOW temp_buffers").fetchone()[0] == "256MB"
        assert cur.execute("SHOW default_transaction_read_only").fetchone()[0] == ("on" if read_only else "off")
        s.close()
