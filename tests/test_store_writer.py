"""The capture writer on a real DuckDB file: batching, flush, close, the spool, the queue bound."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import orjson
import pytest

from protege.store import CaptureWriter, Store, count, get_record, iter_records, record_from_completion
from protege.store import writer as writer_mod


@dataclass
class Cap:
    i: int

    def to_record(self) -> dict:
        response = {"id": f"chatcmpl-{self.i}", "object": "chat.completion", "created": 1_700_000_000 + self.i,
                    "model": "gpt-4o-mini", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                          "finish_reason": "stop"}]}
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": str(self.i)}]}
        return record_from_completion(response, request, metadata={"n": str(self.i)}, source="proxy")


class Broken:
    def to_record(self) -> dict:
        raise ValueError("cannot parse")


@pytest.fixture
def store(store_db, tmp_path):
    s = Store(store_db, data_dir=tmp_path / "data")
    yield s
    try:
        s.close()
    except Exception:
        pass


def ids_in(store) -> list[str]:
    return sorted((r["id"] for r in iter_records(store)), key=lambda x: int(x.split("-")[1]))


def test_batches_are_written_and_flush_waits(store, monkeypatch):
    sizes: list[int] = []
    real = writer_mod.insert_records

    def spy(st, records, cursor=None):
        sizes.append(len(records))
        return real(st, records, cursor)

    monkeypatch.setattr(writer_mod, "insert_records", spy)
    w = CaptureWriter(store, batch_size=10, flush_interval=0.01).start()
    for i in range(35):
        w.submit(Cap(i))
    assert w.flush(10) is True
    assert count(store) == 35 and w.captured == 35 and w.depth == 0
    assert sum(sizes) == 35 and max(sizes) <= 10 and len(sizes) < 35  # batched, never row by row
    assert ids_in(store) == [f"chatcmpl-{i}" for i in range(35)]
    w.close()


def test_close_writes_everything_queued(store):
    # a long interval and a big batch: nothing would be written yet without close()
    w = CaptureWriter(store, batch_size=1000, flush_interval=30).start()
    for i in range(7):
        w.submit(Cap(i))
    w.close(timeout=10)
    assert count(store) == 7
    assert not w.spool.path.exists()


def test_unwritable_database_spools_then_recovers(tmp_path):
    path = str(tmp_path / "ro.duckdb")
    Store(path, data_dir=tmp_path / "data").close()
    ro = Store(path, data_dir=tmp_path / "data", read_only=True)  # inserts fail: read-only file
    w = CaptureWriter(ro, batch_size=5, flush_interval=0.01).start()
    for i in range(12):
        w.submit(Cap(i))
    assert w.flush(10)
    w.close()
    assert w.captured == 0 and w.spooled == 12
    lines = w.spool.path.read_bytes().splitlines()
    assert len(lines) == 12 and orjson.loads(lines[0])["id"] == "chatcmpl-0"
    ro.close()

    rw = Store(path, data_dir=tmp_path / "data")
    w2 = CaptureWriter(rw).start()
    assert w2.recovered == 12
    assert not w2.spool.path.exists()
    assert ids_in(rw) == [f"chatcmpl-{i}" for i in range(12)]
    assert get_record(rw, "chatcmpl-3")["metadata"] == '{"n":"3"}'
    w2.close()
    rw.close()


def test_closed_connection_spools(store):
    w = CaptureWriter(store, batch_size=5, flush_interval=0.01)
    store.close()  # the database goes away under the writer
    w.start()
    for i in range(6):
        w.submit(Cap(i))
    assert w.flush(10)
    w.close()
    assert w.spooled == 6 and len(w.spool.path.read_bytes().splitlines()) == 6


def test_torn_last_spool_line_is_skipped(store):
    spool = store.data_dir / "capture-spool.jsonl"
    spool.parent.mkdir(parents=True, exist_ok=True)
    good = [Cap(1).to_record(), Cap(2).to_record()]
    spool.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in good) + orjson.dumps(Cap(3).to_record())[:40])
    w = CaptureWriter(store).start()
    assert w.recovered == 2
    assert not spool.exists()
    assert ids_in(store) == ["chatcmpl-1", "chatcmpl-2"]
    w.close()


def test_stuck_database_submit_never_blocks_memory_stays_bounded(store, monkeypatch):
    # Was test_queue_bound_spools_and_submit_never_blocks: over the bound, submit() used to write
    # and fsync the spool itself (on the event loop). Now submit never touches a disk: captures
    # the database cannot take yet are journaled by a background thread and let go from memory.
    gate = threading.Event()
    real = writer_mod.insert_records
    calls = []

    def stuck(st, records, cursor=None):  # the database hangs (e.g. a slow disk)
        calls.append(len(records))
        gate.wait(20)
        return real(st, records, cursor)

    monkeypatch.setattr(writer_mod, "insert_records", stuck)
    w = CaptureWriter(store, max_queue=5, batch_size=2, flush_interval=0.01).start()
    w.submit(Cap(0))
    w.submit(Cap(1))
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:  # the thread took a batch and is stuck in it
        time.sleep(0.005)
    slowest = 0.0
    most_in_memory = 0
    for i in range(2, 30):
        t = time.perf_counter()
        w.submit(Cap(i))
        slowest = max(slowest, time.perf_counter() - t)
        most_in_memory = max(most_in_memory, w._mem_count)
        # The journal thread lets captures go from memory while the database is stuck; wait for it
        # (a loaded machine may not run it within a fixed sleep, and a full queue drops, rightly):
        # without the journal, memory never empties and the wait ends at its deadline.
        until = time.monotonic() + 5
        while w._mem_count >= 4 and time.monotonic() < until:
            time.sleep(0.005)
    assert slowest < 0.05  # returns at once: no file, no database
    assert w.spooled == 0 and not w.spool.path.exists() and w.dropped == 0
    assert most_in_memory <= 5  # the rest waits in the journal, not in memory
    gate.set()
    assert w.close(timeout=10)
    assert ids_in(store) == [f"chatcmpl-{i}" for i in range(30)]


def test_unconvertible_capture_is_counted_not_fatal(store):
    w = CaptureWriter(store, batch_size=10, flush_interval=0.01).start()
    w.submit(Broken())
    w.submit(Cap(1))
    assert w.flush(10)
    w.close()
    assert w.failed_conversions == 1 and count(store) == 1
