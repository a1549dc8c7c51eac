"""Captures under faults, in process: bad upstream answers, a full disk (a real tmpfs), spool and
journal reloads, read-your-writes. Each test counts answers received against rows stored.

The process-level faults (SIGTERM, SIGKILL, a slow disk) are in tests/test_capture_signals.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import httpx2 as httpx
import openai
import orjson
import psycopg
import pytest

from protege.settings import Settings
from protege.store import CaptureWriter, Store, count, insert_records, iter_records, record_from_completion
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.http import Served

KEY = "sk-faults-test"


class Proxy:
    """The real proxy app (with the feedback router) under uvicorn, with a writer we configure."""

    def __init__(self, settings: Settings, **writer_options) -> None:
        from protege.distill.feedback.api import router as feedback_router
        from protege.proxy import create_app

        self.store = Store(settings.db, data_dir=settings.data_path)
        self.writer = CaptureWriter(self.store, **writer_options)
        self.app = create_app(settings, self.store, self.writer, routers=[feedback_router])
        self.app.state.protege_store = self.store
        self.app.state.protege_settings = settings
        self.served = Served(self.app)
        self.url, self.base_url = self.served.url, self.served.base_url

    def stop(self) -> None:
        self.served.stop(20)


@pytest.fixture
def proxies():
    started: list[Proxy] = []

    def start(settings: Settings, **writer_options) -> Proxy:
        p = Proxy(settings, **writer_options)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def user_texts(store: Store) -> list[str]:
    return [orjson.loads(r["request"])["messages"][-1]["content"] for r in iter_records(store)]


# -- one bad upstream answer never takes others with it ------------------------------------------

BAD = {
    "int-id": {"id": 123},
    "int-model": {"model": 7},
    "huge-tokens": {"usage": {"prompt_tokens": 3_000_000_000, "completion_tokens": 1, "total_tokens": 3_000_000_001}},
    "fractional-tokens": {"usage": {"prompt_tokens": 1.5, "completion_tokens": 1, "total_tokens": 2.5}},
    "usage-list": {"usage": [1, 2]},
    "created-string": {"created": "yesterday"},
}


def test_bad_upstream_answers_are_stored_alone_and_never_block_others(make_db, proxies):
    fake = start_fake_openai(fields=lambda body: BAD.get(body["messages"][-1]["content"].split(":")[0], {}))
    try:
        proxy = proxies(Settings(db=make_db("bad"), upstream=fake.base_url), flush_interval=0.3, batch_size=500)
        client = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
        good_ids, answered, client_ids = [], 0, {}
        with httpx.Client(timeout=10) as http:
            for i in range(60):
                kind = list(BAD)[(i // 3) % len(BAD)] if i % 3 == 0 else "good"
                text = f"{kind}:{i}"
                if kind == "good":
                    good_ids.append(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}]).id)
                else:  # the SDK would choke on some of these shapes; the proxy relays them as they are
                    r = http.post(proxy.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                  json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
                    assert r.status_code == 200
                    if kind == "int-id":  # the client is answered with Protege's own (string) id
                        client_ids[text] = r.json()["id"]
                answered += 1
        assert proxy.writer.flush(10)
        rows = list(iter_records(proxy.store))
        assert len(rows) == answered == 60  # every answer stored, in one go: nothing spooled
        assert proxy.writer.spooled == 0 and not proxy.writer.spool.path.exists()
        by_text = {orjson.loads(r["request"])["messages"][-1]["content"]: r for r in rows}
        for text, row in by_text.items():
            kind = text.split(":")[0]
            if kind == "good":
                assert row["outcome"] == "ok" and isinstance(row["prompt_tokens"], int)
            elif kind == "int-id":
                # Since Protege mints every capture's id (store/ids.py), the upstream's id is not a
                # column to type: it is kept, as JSON, in upstream_id, and the answer is usable.
                assert row["outcome"] == "ok" and row["upstream_id"] == "123"
                assert row["id"] == client_ids[text] and row["id"].startswith("chatcmpl-")
            else:
                assert row["outcome"] == "invalid_response", (text, row["outcome"])
                assert row["response"] is not None and orjson.loads(row["response"])  # the raw body, kept
                assert row["error"]
        assert "out of range" in by_text["huge-tokens:6"]["error"]
        assert "'usage' must be an object" in by_text["usage-list:12"]["error"]
        assert "'created' must be an integer" in by_text["created-string:15"]["error"]
        assert proxy.writer.invalid == 16  # the 20 bad answers but the 4 int ids
        # the good ones are served by the Stored API as usual
        assert client.chat.completions.retrieve(good_ids[-1]).id == good_ids[-1]
        metrics = httpx.get(proxy.url + "/metrics").text
        assert "protege_captures_invalid_total 16" in metrics
    finally:
        fake.stop()


# -- spool and journal reloads: per record, idempotent, quarantined --------------------------------

def _rec(i: int, **over) -> dict:
    response = {"id": f"chatcmpl-r{i}", "object": "chat.completion", "created": 1_700_000_000 + i, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
    rec = record_from_completion(response, {"model": "m", "messages": [{"role": "user", "content": f"r{i}"}]}, source="proxy")
    rec["seq"] = 1000 + i
    rec.update(over)
    return rec


def test_spool_reload_is_per_record_idempotent_and_quarantines(tmp_path, make_db):
    store = Store(make_db("s"), data_dir=tmp_path / "data")
    spool = store.data_dir / "capture-spool.jsonl"
    spool.parent.mkdir(parents=True)
    good = [_rec(i) for i in range(12)]
    bad = _rec(99, prompt_tokens=3_000_000_000)
    lines = [orjson.dumps(r) for r in good[:6]] + [orjson.dumps(bad)] + [orjson.dumps(r) for r in good[6:]]
    spool.write_bytes(b"\n".join(lines) + b"\n" + orjson.dumps(_rec(100))[:30])  # torn last line
    # A previous load got the first 5 in before it failed (or the process died before removing the file).
    insert_records(store, [dict(r) for r in good[:5]])
    w = CaptureWriter(store).start()
    w.close()
    assert count(store) == 12  # the 5 already there are not duplicated, the 7 others loaded
    assert w.recovered == 7
    assert sorted(user_texts(store), key=lambda t: int(t[1:])) == [f"r{i}" for i in range(12)]
    assert not spool.exists()
    quarantined = [orjson.loads(x) for x in (store.data_dir / "capture-spool.quarantine.jsonl").read_bytes().splitlines()]
    assert len(quarantined) == 2 and w.spool.quarantine.count == 2
    assert "out of range" in quarantined[0]["reason"] and "chatcmpl-r99" in quarantined[0]["line"]
    assert "not JSON" in quarantined[1]["reason"]
    # New captures never reuse the numbers the spool carried.
    assert store.next_seqs(1)[0] > 1011
    w2 = CaptureWriter(store).start()  # a second start has nothing left to load
    w2.close()
    assert count(store) == 12 and w2.recovered == 0
    store.close()


def test_journal_left_by_a_crash_loads_once(tmp_path, make_db):
    """A writer killed after its journal write (some rows inserted, the segment not yet removed)."""
    store = Store(make_db("j"), data_dir=tmp_path / "data")
    jdir = store.data_dir / "capture-journal"
    jdir.mkdir(parents=True)
    recs = [_rec(i) for i in range(20)]
    (jdir / "000000000001.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
    insert_records(store, [dict(r) for r in recs[:13]])
    for _ in range(2):  # and once more: nothing doubles
        w = CaptureWriter(store).start()
        w.close()
    assert count(store) == 20
    assert sorted(user_texts(store), key=lambda t: int(t[1:])) == [f"r{i}" for i in range(20)]
    assert not list(jdir.glob("0*.jsonl"))
    store.close()


# -- disk full: a real tmpfs filled to 100 % ---------------------------------------------------------

@contextlib.contextmanager
def small_disk(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); these tests need root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    """Fill the filesystem at ``path`` to 100 %; returns the filler file (delete it to free the disk)."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 16, 4096, 512, 1):  # down to the last partial blocks
            block = b"\0" * size
            try:
                while True:
                    fh.write(block)
            except OSError:
                pass
    st = os.statvfs(path)
    assert st.f_bavail == 0
    return filler


REFUSE = """CREATE FUNCTION protege_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$;
CREATE TRIGGER protege_test_disk_full BEFORE INSERT ON completions EXECUTE FUNCTION protege_test_disk_full()"""


@contextlib.contextmanager
def nowhere_to_write(disk: Path, db: str):
    """Nothing can be written anywhere while inside: the filesystem at ``disk`` (the DuckDB file,
    or a PostgreSQL store's data_dir: the journal and the spool) filled to 100 %, and a PostgreSQL
    database, whose files are on its server's disk, refusing every insert as a full disk makes it
    (SQLSTATE 53100). Everything is freed on the way out."""
    filler = fill(disk)
    try:
        if "://" in db:
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute(REFUSE)
        try:
            yield
        finally:
            if "://" in db:
                with psycopg.connect(db, autocommit=True) as conn:
                    conn.execute("DROP TRIGGER protege_test_disk_full ON completions; DROP FUNCTION protege_test_disk_full()")
    finally:
        filler.unlink()


def store_on(disk: Path, backend: str, make_db) -> tuple[str, Path]:
    """The ``db`` and data_dir of a store whose local files are on ``disk``: a DuckDB file there, or
    a PostgreSQL database (on its server) whose data_dir is there."""
    return (str(disk / "store.duckdb") if backend == "duckdb" else make_db("store")), disk / "data"


def test_disk_full_keeps_captures_in_memory_reports_degraded_and_loses_none(tmp_path, proxies, backend, make_db):
    fake = start_fake_openai()
    try:
        with small_disk(tmp_path / "disk", "24m") as disk:
            db, data_dir = store_on(disk, backend, make_db)
            proxy = proxies(Settings(db=db, data_dir=str(data_dir), upstream=fake.base_url), flush_interval=0.05)
            client = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
            answered = 0
            for i in range(30):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"before {i}"}], stream=i % 2 == 0)
                answered += 1
            assert proxy.writer.flush(10)
            with nowhere_to_write(disk, db):
                for i in range(300):  # the disk is full: the proxy keeps answering
                    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"full {i}"}])
                    assert r.choices[0].message.content
                    answered += 1
                assert not proxy.writer.flush(1.0)  # nothing can be written anywhere
                health = httpx.get(proxy.url + "/healthz")
                assert health.status_code == 503
                body = health.json()
                assert body["status"] == "degraded" and body["capture"]["problems"]
                assert any("held only in memory" in p for p in body["capture"]["problems"])
                metrics = httpx.get(proxy.url + "/metrics").text
                assert "protege_capture_degraded 1" in metrics and "protege_captures_dropped_total 0" in metrics
            # Retried until written once the disk has room again (straight in, or via the spool,
            # which the writer loads back by itself).
            deadline = time.monotonic() + 30
            while count(proxy.store) < answered and time.monotonic() < deadline:
                time.sleep(0.1)
            assert proxy.writer.flush(10)
            assert proxy.writer.dropped == 0
            rows = user_texts(proxy.store)
            assert len(rows) == answered == 330
            assert sorted(rows) == sorted([f"before {i}" for i in range(30)] + [f"full {i}" for i in range(300)])
            assert httpx.get(proxy.url + "/healthz").status_code == 200
            proxy.stop()
            proxy.store.close()
    finally:
        fake.stop()


class Sized:
    """A capture with a known memory size, for the budget."""

    def __init__(self, i: int) -> None:
        self.i = i

    def approx_bytes(self) -> int:
        return 10_000

    def to_record(self) -> dict:
        return _rec(self.i, seq=None)


def test_disk_full_past_the_memory_budget_drops_and_counts(tmp_path, backend, make_db):
    with small_disk(tmp_path / "disk", "24m") as disk:
        db, data_dir = store_on(disk, backend, make_db)
        store = Store(db, data_dir=data_dir)
        w = CaptureWriter(store, flush_interval=0.02, memory_budget=100_000).start()
        with nowhere_to_write(disk, db):
            for i in range(25):
                w.submit(Sized(i))
            time.sleep(0.3)
            assert w.dropped == 15  # 10 x 10 kB fit the budget; every one over it is counted
            health = w.health()
            assert health["status"] == "degraded" and any("dropped" in p for p in health["problems"])
        assert w.flush(20)
        assert count(store) == 10 == 25 - w.dropped
        w.close()
        store.close()


# Only PostgreSQL has it: a DuckDB store's database file is on the same disk as its data_dir (the tests above).
@pytest.mark.backends("postgresql")
def test_a_full_data_dir_disk_on_postgresql_stores_straight_into_the_database(tmp_path, proxies, make_db):
    """A PostgreSQL store's data is on its server's disk; only the journal and the spool are in the
    local data_dir. When that disk fills, captures still go straight into the database (none waits
    for the disk, none is spooled or lost) and /healthz says that the journal cannot be written."""
    fake = start_fake_openai()
    try:
        with small_disk(tmp_path / "disk", "24m") as disk:
            proxy = proxies(Settings(db=make_db("full"), data_dir=str(disk / "data"), upstream=fake.base_url), flush_interval=0.05)
            client = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "before"}])
            assert proxy.writer.flush(10)
            filler = fill(disk)
            try:
                for i in range(50):
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"full {i}"}], stream=i % 2 == 0)
                assert proxy.writer.flush(10)  # into the database, disk or no disk
                assert sorted(user_texts(proxy.store)) == sorted(["before"] + [f"full {i}" for i in range(50)])
                health = httpx.get(proxy.url + "/healthz")
                assert health.status_code == 503
                assert any(p.startswith("journal: ") for p in health.json()["capture"]["problems"])
            finally:
                filler.unlink()
            deadline = time.monotonic() + 10  # room again: the journal's probe clears the problem
            while httpx.get(proxy.url + "/healthz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert httpx.get(proxy.url + "/healthz").json()["status"] == "ok"
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "after"}])
            assert proxy.writer.flush(10) and count(proxy.store) == 52
            assert proxy.writer.spooled == 0 and proxy.writer.dropped == 0
            proxy.stop()
            proxy.store.close()
    finally:
        fake.stop()


# -- read-your-writes --------------------------------------------------------------------------------

def test_read_your_writes_without_waiting_on_the_request_path(make_db, proxies, fake_openai):
    # A long flush interval: before, each of these reads was a 404 for up to 2 x flush_interval.
    proxy = proxies(Settings(db=make_db("ryw"), upstream=fake_openai.base_url), flush_interval=1.5)
    client = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    for i in range(5):
        t0 = time.monotonic()
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"hello {i}"}], metadata={"n": str(i)})
        assert time.monotonic() - t0 < 1.0  # the answer did not wait for the database
        if i % 2:
            assert client.chat.completions.retrieve(r.id).id == r.id
        else:
            status = httpx.post(f"{proxy.url}/protege/v1/completions/{r.id}/feedback", json={"score": 1.0}).status_code
            assert status == 200
        assert [m.content for m in client.chat.completions.messages.list(r.id)] == [f"hello {i}"]
        assert client.chat.completions.update(r.id, metadata={"n": "x"}).metadata == {"n": "x"}
    # Bounded: an unknown id is a 404 at once when nothing is on its way...
    assert proxy.writer.flush(10)
    t0 = time.monotonic()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve("chatcmpl-nope")
    assert time.monotonic() - t0 < 0.5
    # ... and while other captures are (here for up to the 1.5 s flush interval): only the id
    # being written is waited for.
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "in flight"}])
    assert proxy.writer.depth > 0
    t0 = time.monotonic()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve("chatcmpl-nope")
    status = httpx.post(f"{proxy.url}/protege/v1/completions/chatcmpl-nope/feedback", json={"score": 1.0}).status_code
    assert status == 404 and time.monotonic() - t0 < 0.5


def test_a_streamed_answer_is_readable_once_the_sdk_has_it(make_db, proxies):
    """The SDK returns at ``data: [DONE]``; the upstream may close the stream later. The capture is
    submitted before ``[DONE]`` reaches the client, so retrieve and feedback find it at once (before,
    a 404 until the upstream closed: here 1.5 s)."""
    fake = start_fake_openai(linger=1.5)
    try:
        proxy = proxies(Settings(db=make_db("ryws"), upstream=fake.base_url), flush_interval=0.05)
        client = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
        for i in range(2):
            with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": f"streamed {i}"}]) as s:
                final = s.get_final_completion()
            if i == 0:
                assert client.chat.completions.retrieve(final.id).choices[0].message.content == "streamed 0"
            else:
                status = httpx.post(f"{proxy.url}/protege/v1/completions/{final.id}/feedback", json={"score": 1.0}).status_code
                assert status == 200
        assert proxy.writer.flush(10)
        rec = next(r for r in iter_records(proxy.store) if r["id"] == final.id)
        assert rec["outcome"] == "ok" and rec["finish_reason"] == "stop"
    finally:
        fake.stop()


def test_a_spool_written_before_minted_ids_loads_without_duplicate_ids(tmp_path, make_db):
    """Spool lines from before migration 5 carry the upstream's id (no ``upstream_id``, no ``seq``):
    a repeated upstream id gets a fresh id, a line already stored is skipped."""
    store = Store(make_db("s"), data_dir=tmp_path / "data")
    stored = _rec(1, id="chatcmpl-123")
    stored.pop("seq")
    insert_records(store, [dict(stored)])
    legacy = []
    for i in (1, 2, 3):  # 1 is the completion already stored; 2 and 3 are others the upstream gave the same id
        rec = _rec(i, id="chatcmpl-123")
        rec.pop("seq")
        rec.pop("upstream_id", None)
        legacy.append(orjson.dumps(rec))
    spool = store.data_dir / "capture-spool.jsonl"
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(b"\n".join(legacy) + b"\n")
    w = CaptureWriter(store).start()
    w.close()
    rows = list(iter_records(store))
    assert sorted(r["request"].count("r2") + 2 * r["request"].count("r3") for r in rows) == [0, 1, 2]
    assert len({r["id"] for r in rows}) == 3 == len(rows)
    assert [r["id"] for r in rows].count("chatcmpl-123") == 1  # the stored one keeps its id
    assert {r["upstream_id"] for r in rows if r["id"] != "chatcmpl-123"} == {"chatcmpl-123"}
    store.close()


def test_a_writer_starts_on_a_full_disk_and_still_holds_its_journal(tmp_path, store_db):
    """The journal directory's lock file records its holder's PID; on a full disk that write fails,
    and the writer must start anyway (holding the lock: a second writer is still refused), its
    captures reaching the database."""
    from protege.store import JournalInUseError

    from tests.fixtures.stores import store_record

    class Cap:
        def to_record(self) -> dict:
            return store_record(1)

    with small_disk(tmp_path / "disk", "4m") as disk:
        store = Store(store_db, data_dir=disk / "data")
        (disk / "data" / "capture-journal").mkdir(parents=True, exist_ok=True)
        filler = fill(disk)
        writer = CaptureWriter(store, flush_interval=0.01).start()
        try:
            with pytest.raises(JournalInUseError):
                CaptureWriter(store, flush_interval=0.01).start()
            filler.unlink()
            writer.submit(Cap())
            assert writer.flush(10) and count(store) == 1
        finally:
            writer.close()
            store.close()
