"""The capture writer: requests never wait on a disk, and a capture survives the faults it can.

The proxy hands each capture to :meth:`CaptureWriter.submit`, which only appends it to an
in-memory queue bounded by bytes (``memory_budget``): nothing on the event loop touches a file
or the database. Two background threads do the rest:

* the **journal thread** wakes every ``flush_interval``, turns the queued captures into typed
  records (one at a time: a capture that cannot be typed is stored as ``invalid_response`` with
  its raw body, it never fails the others), numbers them (``seq``) and appends them to the
  journal (:class:`~protege.store.journal.Journal`) with one write and one fdatasync;
* the **database thread** inserts journaled records in Arrow batches, then releases their journal
  segment. When the database refuses a batch it goes to the spool; when the spool cannot be
  written either (disk full), the records stay in memory and are retried until one of the two
  takes them. When more than half the budget is waiting for the database (slow disk), journaled
  records are let go from memory and read back from the journal when their turn comes.

What this guarantees, in plain words (also in the README):

* SIGTERM: the queue is journaled at once and the database gets ``drain_timeout`` seconds; what
  it has not inserted by then stays in the journal and is loaded on the next start.
* SIGKILL: only captures submitted within the last ``flush_interval`` (plus one journal write)
  are lost; everything older is in the journal or the database, and the next start loads it.
* Disk full: captures stay in memory (up to ``memory_budget`` bytes) and are retried; a capture
  that does not fit is dropped and counted (``protege_captures_dropped_total``); ``health()``
  says what is wrong. Reloads are idempotent: a crash mid-reload never duplicates rows.

Read-your-writes: :meth:`read_your_writes` lets a reader (in a thread, never on the event loop)
wait, boundedly, until everything submitted before it is in the database.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import orjson

from .completions import insert_records
from .db import Store
from .dirlock import DirLock, JournalInUseError
from .journal import Journal, Spool, StoreUnavailable, load_lines, max_seq_in

log = logging.getLogger("protege.store.writer")

T = TypeVar("T")
DEFAULT_BUDGET = 256 * 1024 * 1024
_UNKNOWN_SIZE = 4096


class Capture(Protocol):
    """Anything that can become a completions record, off the request path.

    Optional: ``approx_bytes()`` (its memory, for the budget) and ``raw_record()`` (a record that
    keeps the raw bytes when ``to_record`` raises)."""

    def to_record(self) -> dict[str, Any]: ...


@dataclass
class _Item:
    """One journal write's worth of records on their way to the database."""

    records: list[dict[str, Any]] | None  # None: let go from memory, read back from the journal
    seg: int | None  # journal segment (None: the journal could not be written, memory only)
    start: int
    end: int
    count: int  # records
    captures: int  # captures submitted (records + those that produced none)
    nbytes: int  # memory it holds


class CaptureWriter:
    def __init__(
        self,
        store: Store,
        spool_path: Path | None = None,
        *,
        max_queue: int = 100_000,
        batch_size: int = 2_000,
        flush_interval: float = 0.05,
        memory_budget: int = DEFAULT_BUDGET,
        drain_timeout: float = 5.0,
        journal_dir: Path | None = None,
        journal_fsync: bool = True,
        read_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.spool = Spool(spool_path or store.data_dir / "capture-spool.jsonl")
        self.journal = Journal(journal_dir or store.data_dir / "capture-journal", fsync=journal_fsync)
        # Held from start() (or claim()) to close(): one writer per journal directory (store/dirlock.py).
        self._dir_lock = DirLock(self.journal.dir)
        self.max_queue = max_queue  # a count bound on captures held in memory, beside the byte budget
        self.memory_budget = memory_budget
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.drain_timeout = drain_timeout
        self.read_timeout = read_timeout
        self._pending: collections.deque[tuple[Any, int]] = collections.deque()
        self._ready: collections.deque[_Item] = collections.deque()
        self._lock = threading.Lock()  # guards the byte/count accounting below
        self._mem_bytes = 0  # captures pending + records held in memory
        self._mem_count = 0
        self._ready_bytes = 0
        self._submitted = 0
        self._resolved = 0
        # Read-your-writes: each id on its way to the database -> its submit ordinal (resolved once
        # ``_resolved`` reaches it); the deque purges them in order.
        self._inflight: dict[str, int] = {}
        self._inflight_order: collections.deque[tuple[int, str]] = collections.deque()
        self._progress = threading.Condition()
        self._journal_wake = threading.Event()
        self._db_wake = threading.Event()
        self._stop = False
        self._abandon = False
        self._flush_now = False
        self._journal_thread: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._last_spool_try = 0.0
        self.closed_clean: bool | None = None  # set by close()
        self._cursor: Any = None
        # State for health() and /metrics.
        self.captured = 0
        self.spooled = 0
        self.dropped = 0
        self.failed_conversions = 0
        self.invalid = 0
        self.recovered = 0
        self.duplicates_skipped = 0
        self.journal_errors = 0
        self.db_errors = 0
        self.spool_errors = 0
        self.db_error: str | None = None
        self.journal_error: str | None = None
        self.spool_error: str | None = None
        self._last_drop = 0.0
        self._journal_error_at = 0.0
        self._spool_error_at = 0.0

    # -- lifecycle --------------------------------------------------------------------------
    def claim(self) -> None:
        """Take the journal directory's lock, or raise :class:`JournalInUseError` (another process or
        writer has it: its open segment is not ours to replay). :meth:`start` claims it too; a
        server claims it before it starts listening, so the error is its one line at start-up."""
        self._dir_lock.acquire()

    def start(self) -> "CaptureWriter":
        """Reload what an earlier process left (journal segments, spool), then start the threads."""
        self.claim()
        leftovers = [p for _, p in self.journal.segments()]
        top = max_seq_in(leftovers + ([self.spool.path] if self.spool.exists() else []))
        if top:
            self.store.seqs_above(top)  # even if the reload fails now, new captures never reuse them
        self._recover(leftovers)
        self._journal_thread = threading.Thread(target=self._journal_loop, name="protege-capture-journal", daemon=True)
        self._thread = threading.Thread(target=self._db_loop, name="protege-capture-writer", daemon=True)
        self._journal_thread.start()
        self._thread.start()
        return self

    def _recover(self, segments: list[Path]) -> None:
        for path in segments:
            try:
                with open(path, "rb") as fh:
                    result = load_lines(self.store, fh, self.journal.quarantine)
                path.unlink()
                self.recovered += result.loaded
                self.duplicates_skipped += result.duplicates
                if result.loaded:
                    log.info("loaded %d captures from the journal %s (%d already stored)", result.loaded, path.name, result.duplicates)
            except Exception as exc:  # the database is down: keep the file for the next start
                log.error("could not load the capture journal %s (%s); it is kept for the next start", path, exc)
                return
        self._load_spool()

    def _load_spool(self) -> bool:
        self._last_spool_try = time.monotonic()
        if not self.spool.exists():
            return True
        try:
            n = self.spool.load_into(self.store)
        except Exception as exc:
            log.error("could not load the capture spool (%s); it is kept and retried", exc)
            return False
        self.recovered += n
        self.db_error = None
        if n:
            log.info("loaded %d spooled captures into the store", n)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Journal everything queued, give the database ``timeout`` (default ``drain_timeout``)
        seconds, then leave what remains in the journal (or the spool) for the next start.
        Returns True when everything reached the database or the spool in time."""
        deadline = time.monotonic() + (self.drain_timeout if timeout is None else timeout)
        self._stop = True
        self._journal_wake.set()
        self._db_wake.set()
        for thread in (self._journal_thread, self._thread):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        clean = not any(t is not None and t.is_alive() for t in (self._journal_thread, self._thread))
        self._abandon = True
        self._db_wake.set()
        if not clean and self._cursor is not None:
            try:  # stop the insert that is still running: its records are in the journal
                self._cursor.interrupt()
            except Exception:
                pass
        if self._journal_thread is not None and self._journal_thread.is_alive():
            self._journal_thread.join(1.0)  # it is mid-write; the captures it holds are its to write
        # What the database did not take in time: records only in memory go to the spool now.
        with self._lock:
            left = list(self._ready)
            self._ready.clear()
            pending = [cap for cap, _ in self._pending]
            self._pending.clear()
        memory_only = [r for it in left if it.seg is None and it.records for r in it.records]
        if pending:
            records, _ = self._convert(pending)
            memory_only += records
        if memory_only:
            try:
                self.spool.append(memory_only)
                self.spooled += len(memory_only)
            except OSError as exc:
                self.dropped += len(memory_only)
                log.error("could not write %d captures anywhere at shutdown (%s): they are lost", len(memory_only), exc)
        journaled = sum(it.count for it in left if it.seg is not None)
        if journaled:
            log.warning("%d captures not yet in the database are kept in the journal %s for the next start", journaled, self.journal.dir)
        self.journal.close()
        self._dir_lock.release()
        self._journal_thread = self._thread = None
        with self._progress:
            self._resolved = self._submitted
            self._forget_resolved()
            self._progress.notify_all()
        self.closed_clean = clean and not left and not pending
        return self.closed_clean

    # -- the request path -------------------------------------------------------------------
    def submit(self, capture: Capture) -> None:
        """O(1); never touches a disk. Over the memory budget the capture is dropped and counted."""
        size = capture.approx_bytes() if hasattr(capture, "approx_bytes") else _UNKNOWN_SIZE
        with self._lock:
            if self._mem_bytes + size > self.memory_budget or self._mem_count >= self.max_queue:
                self.dropped += 1
                drop = True
            else:
                self._mem_bytes += size
                self._mem_count += 1
                self._pending.append((capture, size))
                self._submitted += 1
                rid = getattr(capture, "record_id", None)
                if rid:
                    self._inflight[rid] = self._submitted
                    self._inflight_order.append((self._submitted, rid))
                drop = False
        if drop:
            now = time.monotonic()
            if now - self._last_drop > 5.0:
                log.error("capture memory budget (%d bytes) is full: dropping captures (%d so far)", self.memory_budget, self.dropped)
            self._last_drop = now

    @property
    def depth(self) -> int:
        """Captures submitted and not yet in the database or the spool."""
        return self._submitted - self._resolved

    @property
    def memory_bytes(self) -> int:
        return self._mem_bytes

    def sync(self, timeout: float) -> bool:
        """Wait until everything submitted before this call is written (or timeout). Threads only."""
        return self._wait_resolved(self._submitted, timeout)

    def _wait_resolved(self, target: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._progress:
            while self._resolved < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._flush_now = True
                self._journal_wake.set()
                self._progress.wait(min(remaining, 0.05))
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted so far is written (tests, CLI, shutdown)."""
        return self.sync(timeout)

    def read_your_writes(
        self, fetch: Callable[[], T | None], completion_id: str | None = None, timeout: float | None = None,
    ) -> T | None:
        """``fetch()``; when it finds nothing while that completion (``completion_id``; without
        one, any capture) is still on its way, wait (at most ``timeout``, default
        ``read_timeout``) for the writer to pass it, and fetch again. An id that is not on its way
        is answered at once: unknown ids never wait, however busy the writer is.

        For the Stored API and feedback: a client that has its answer can read that completion
        at once, and the request path itself never waits on the database. Call it in a thread."""
        found = fetch()
        if found is not None:
            return found
        if completion_id is not None:
            target = self._inflight.get(completion_id)
            if target is None:
                return None
        elif self.depth == 0:
            return None
        else:
            target = self._submitted
        self._wait_resolved(target, self.read_timeout if timeout is None else timeout)
        return fetch()

    def health(self) -> dict[str, Any]:
        """What is wrong with capture, for /healthz: an empty ``problems`` list means healthy."""
        problems = []
        if self.db_error:
            problems.append(f"database: {self.db_error}")
        with self._lock:  # never held across I/O: a short wait at most, on the event loop
            held = sum(it.count for it in self._ready if it.seg is None)
        if self.journal_error:  # cleared by the next journal write, or a probe when idle
            problems.append(f"journal: {self.journal_error}")
        if self.spool_error and (held or self.db_error):  # the spool matters only while the database refuses
            problems.append(f"spool: {self.spool_error}")
        if held:
            problems.append(f"{held} captures are held only in memory until a disk takes them")
        if self._last_drop and time.monotonic() - self._last_drop < 60:
            problems.append(f"captures were dropped in the last minute ({self.dropped} in all): the memory budget is full")
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "queue": self.depth,
            "memory_bytes": self._mem_bytes,
            "memory_budget": self.memory_budget,
            "dropped": self.dropped,
        }

    # -- the journal thread -----------------------------------------------------------------
    def _convert(self, caps: list[Any]) -> tuple[list[dict[str, Any]], int]:
        """Records for captures, one at a time; returns (records, captures that gave none)."""
        records = []
        failed = 0
        for cap in caps:
            try:
                rec = cap.to_record() if hasattr(cap, "to_record") else dict(cap)
            except Exception as exc:
                rec = None
                if hasattr(cap, "raw_record"):
                    try:
                        rec = cap.raw_record(f"could not build a record: {type(exc).__name__}: {exc}")
                    except Exception:
                        rec = None
                if rec is None:
                    failed += 1
                    self.failed_conversions += 1
                    log.exception("could not build a record from a capture")
                    continue
            if rec.get("outcome") == "invalid_response":
                self.invalid += 1
            records.append(rec)
        return records, failed

    def _journal_loop(self) -> None:
        while True:
            if not self._stop:
                # One journal write per flush interval: SIGKILL loses at most this window.
                self._journal_wake.wait(self.flush_interval)
                self._journal_wake.clear()
            self._flush_now = False
            with self._lock:
                group = list(self._pending)
                self._pending.clear()
            if not group:
                if self._stop:
                    return
                if self.journal_error is not None and self.journal.probe():
                    log.info("the capture journal can be written again")
                    self.journal_error = None
                continue
            try:
                self._journal_group(group)
            except Exception:  # never let the thread die; account for the captures it lost
                log.exception("capture journal thread error: %d captures lost", len(group))
                with self._lock:
                    self.dropped += len(group)
                    self._mem_bytes -= sum(size for _, size in group)
                    self._mem_count -= len(group)
                    self._ready.append(_Item(None, None, 0, 0, 0, len(group), 0))
            self._db_wake.set()

    def _journal_group(self, group: list[tuple[Any, int]]) -> None:
        records, failed = self._convert([cap for cap, _ in group])
        nbytes = sum(size for _, size in group)
        if self.store.dialect.name == "postgresql":
            # Several replicas number captures from the database's sequence, which this thread must
            # never wait on (a slow or unreachable server would fill memory): the insert numbers
            # them, and a reload knows an unnumbered record by its id (store/journal.py).
            seqs: list[int | None] = [None] * len(records)
        else:
            seqs = list(self.store.next_seqs(len(records)))
        for rec, seq in zip(records, seqs):
            rec["seq"] = seq
        lines = [orjson.dumps(r) + b"\n" for r in records]
        seg: int | None = None
        base = 0
        if records:
            try:
                seg, base, _ = self.journal.append(b"".join(lines), len(records))
                self.journal_error = None
            except OSError as exc:
                self.journal_errors += 1
                if self.journal_error is None:
                    log.error("capture journal cannot be written (%s): captures wait in memory", exc)
                self.journal_error = str(exc)
                self._journal_error_at = time.monotonic()
        with self._lock:
            spill = seg is not None and (
                self._ready_bytes + nbytes > self.memory_budget // 2 or self._mem_count > self.max_queue // 2
            )
            if spill:  # in the journal already: no need to hold it in memory as well
                self._mem_bytes -= nbytes
                self._mem_count -= len(group)
            else:
                self._ready_bytes += nbytes
            # Items of at most batch_size records; the first one also answers for failed conversions.
            offset = base
            for i in range(0, max(len(records), 1), self.batch_size):
                chunk = records[i : i + self.batch_size]
                size = sum(len(line) for line in lines[i : i + self.batch_size])
                first = i == 0
                self._ready.append(_Item(
                    None if spill else chunk, seg, offset, offset + size, len(chunk),
                    len(chunk) + (failed if first else 0), (nbytes if first and not spill else 0),
                ))
                offset += size

    # -- the database thread ----------------------------------------------------------------
    def _take(self) -> list[_Item]:
        with self._lock:
            items: list[_Item] = []
            n = 0
            for it in self._ready:
                if items and n + it.count > self.batch_size:
                    break
                items.append(it)
                n += it.count
            return items

    def _records_of(self, items: list[_Item]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for it in items:
            if it.records is not None:
                out += it.records
            elif it.seg is not None and it.count:
                data = self.journal.read(it.seg, it.start, it.end)
                out += [orjson.loads(line) for line in data.splitlines() if line.strip()]
        return out

    def _finish(self, items: list[_Item]) -> None:
        captures = 0
        with self._lock:
            for it in items:
                if self._ready and self._ready[0] is it:
                    self._ready.popleft()
                self._mem_bytes -= it.nbytes
                self._ready_bytes -= it.nbytes
                if it.records is not None:
                    self._mem_count -= it.captures
                captures += it.captures
        for it in items:
            if it.seg is not None:
                self.journal.done(it.seg, it.count)
        with self._progress:
            self._resolved += captures
            self._forget_resolved()
            self._progress.notify_all()

    def _forget_resolved(self) -> None:
        order, inflight = self._inflight_order, self._inflight
        while order and order[0][0] <= self._resolved:
            ordinal, rid = order.popleft()
            if inflight.get(rid) == ordinal:
                del inflight[rid]

    def _db_loop(self) -> None:
        try:
            cursor = self._cursor = self.store.cursor()
        except Exception as exc:  # the database is gone: every batch will go to the spool
            log.error("capture writer has no database connection (%s); captures go to the spool", exc)
            cursor = None
        backoff = self.flush_interval
        while not self._abandon:
            items = self._take()
            if not items:
                journal_alive = self._journal_thread is not None and self._journal_thread.is_alive()
                if self._stop and not journal_alive and not self._pending:
                    return
                if self.spool.exists() and time.monotonic() - self._last_spool_try > 2.0:
                    self._load_spool()  # the database works again: bring back what it refused
                self._db_wake.wait(self.flush_interval)
                self._db_wake.clear()
                continue
            try:
                records = self._records_of(items)
            except Exception as exc:  # a journal segment cannot be read back
                log.error("could not read captures back from the journal (%s); retrying", exc)
                self._db_wake.wait(backoff)
                continue
            if self._write(records, cursor):
                backoff = self.flush_interval
                if not self._abandon:
                    self._finish(items)
            else:
                backoff = min(backoff * 2, 1.0)
                self._db_wake.wait(backoff)  # held in memory (or the journal): retried

    def _write(self, records: list[dict[str, Any]], cursor: Any) -> bool:
        """Into the database, else the spool; False when neither took them."""
        if not records:
            return True
        try:
            if self.store.dialect.name == "postgresql":
                cursor = None  # this thread's connection, which the store replaces when the server dropped it
            elif cursor is None:
                raise StoreUnavailable("no database connection")
            insert_records(self.store, records, cursor)
            self.captured += len(records)
            if self.db_error is not None:
                log.info("the database takes captures again")
            self.db_error = None
            return True
        except Exception as exc:
            if self._abandon:  # shutting down past the drain limit: the journal keeps these
                return False
            self.db_errors += 1
            if self.db_error is None:
                log.error("capture batch of %d could not be written (%s); spooling it", len(records), exc)
            self.db_error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        try:
            self.spool.append(records)
            self.spooled += len(records)
            self.spool_error = None
            return True
        except Exception as exc:
            self.spool_errors += 1
            if self.spool_error is None:
                log.error("capture spool %s cannot be written either (%s): %d captures wait in memory", self.spool.path, exc, len(records))
            self.spool_error = str(exc)
            self._spool_error_at = time.monotonic()
            return False


def new_capture_id() -> str:
    return f"chatcmpl-protege-{secrets.token_hex(12)}"


__all__ = ["Capture", "CaptureWriter", "Journal", "JournalInUseError", "Spool", "StoreUnavailable"]
