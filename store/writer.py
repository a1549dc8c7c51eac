"""The capture writer: requests never wait on the database.

The proxy hands each capture to :meth:`CaptureWriter.submit`, which only appends to a bounded
in-memory queue. A background thread turns captures into records (parsing, stream reassembly: all
the work that can be done later) and writes them in Arrow batches. If the database cannot be
written (locked, disk full, ...) the batch is appended to a spool file, loaded again on the next
start. If the queue is full the capture goes straight to the spool, so the proxy keeps serving and
nothing it answered is lost.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from .completions import insert_records
from .db import Store

log = logging.getLogger("protege.store.writer")


class Capture(Protocol):
    """Anything that can become a completions record, off the request path."""

    def to_record(self) -> dict[str, Any]: ...


class Spool:
    """Append-only JSONL of records that could not be written to the database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, records: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        with self._lock, open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def load_into(self, store: Store) -> int:
        """Write spooled records into the store, then remove the spool. Returns how many."""
        with self._lock:
            if not self.path.exists():
                return 0
            records = []
            with open(self.path, "rb") as fh:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        rec = orjson.loads(line)
                    except orjson.JSONDecodeError:  # a torn last line after a crash
                        log.warning("skipping a torn line in the capture spool %s", self.path)
                        continue
                    rec.pop("seq", None)
                    records.append(rec)
            for i in range(0, len(records), 10_000):
                insert_records(store, records[i : i + 10_000])
            self.path.unlink()
            return len(records)


class CaptureWriter:
    def __init__(
        self,
        store: Store,
        spool_path: Path | None = None,
        *,
        max_queue: int = 100_000,
        batch_size: int = 2_000,
        flush_interval: float = 0.05,
    ) -> None:
        self.store = store
        self.spool = Spool(spool_path or store.data_dir / "capture-spool.jsonl")
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._flush_now = False
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._in_flight = 0
        # Counters for /metrics.
        self.captured = 0
        self.spooled = 0
        self.failed_conversions = 0
        self.recovered = 0

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "CaptureWriter":
        try:
            self.recovered = self.spool.load_into(self.store)
            if self.recovered:
                log.info("loaded %d spooled captures into the store", self.recovered)
        except Exception as exc:  # keep the spool for the next start
            log.error("could not load the capture spool (%s); it is kept for the next start", exc)
        self._thread = threading.Thread(target=self._run, name="protege-capture-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop the thread."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._queue:  # thread gone (timeout): never drop captures
            self._spool_batch(self._drain(len(self._queue)))

    # -- the request path -------------------------------------------------------------------
    def submit(self, capture: Capture) -> None:
        """O(1), never blocks on the database. Over the queue bound the capture is spooled."""
        if len(self._queue) >= self.max_queue:
            self._spool_batch([capture])
            return
        self._queue.append(capture)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._queue) + self._in_flight

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted so far is written (tests, CLI, shutdown)."""
        deadline = time.monotonic() + timeout
        self._flush_now = True
        self._wake.set()
        with self._idle:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._flush_now = True
                self._wake.set()
                self._idle.wait(min(remaining, 0.05))
        return True

    # -- the background thread --------------------------------------------------------------
    def _drain(self, n: int) -> list[Any]:
        out = []
        q = self._queue
        for _ in range(min(n, len(q))):
            out.append(q.popleft())
        return out

    def _run(self) -> None:
        try:
            cursor = self.store.cursor()
        except Exception as exc:  # the database is gone: every batch will go to the spool
            log.error("capture writer has no database connection (%s); captures go to the spool", exc)
            cursor = None
        while True:
            if not self._queue:
                if self._stop:
                    break
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                continue
            if len(self._queue) < self.batch_size and not (self._stop or self._flush_now):
                # An insert costs ~10 ms of CPU whatever its size: let a batch gather for up to
                # flush_interval (a full batch, flush() or close() wakes the thread at once).
                self._wake.wait(self.flush_interval)
                self._wake.clear()
            self._flush_now = False
            self._in_flight = min(self.batch_size, len(self._queue))
            batch = self._drain(self._in_flight)
            try:
                self._write(batch, cursor)
            finally:
                self._in_flight = 0
                with self._idle:
                    self._idle.notify_all()
        with self._idle:
            self._idle.notify_all()

    def _records(self, batch: list[Any]) -> list[dict[str, Any]]:
        records = []
        for cap in batch:
            try:
                records.append(cap.to_record() if hasattr(cap, "to_record") else dict(cap))
            except Exception:  # a capture we cannot parse is still kept, raw, for inspection
                self.failed_conversions += 1
                log.exception("could not build a record from a capture")
        return records

    def _write(self, batch: list[Any], cursor: Any) -> None:
        records = self._records(batch)
        try:
            insert_records(self.store, records, cursor)
            self.captured += len(records)
        except Exception as exc:
            log.error("capture batch of %d could not be written (%s); spooling it", len(records), exc)
            self._spool_records(records)

    def _spool_batch(self, batch: list[Any]) -> None:
        self._spool_records(self._records(batch))

    def _spool_records(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            rec.pop("seq", None)
        try:
            self.spool.append(records)
            self.spooled += len(records)
        except Exception:
            log.exception("could not write %d captures to the spool %s", len(records), self.spool.path)
