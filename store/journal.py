"""Files the capture writer keeps captures in until the database has them.

* :class:`Journal`: write-ahead segments (``capture-journal/<n>.jsonl``). The writer appends every
  capture to the open segment within one flush interval of its submission, from a background
  thread, and deletes a segment once the database holds all of its records. After a SIGKILL only
  the captures not yet appended are lost: the window is the flush interval, not the queue.
* :class:`Spool`: records the database refused while the process ran.
* :func:`load_lines`: how both are read back: record by record, idempotently (a record whose
  ``seq`` and ``id`` are already in the table is skipped, so a crash between the insert and the
  file's removal never duplicates rows) and a record that cannot be loaded is quarantined in a
  file beside it and counted, while the rest load.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from .completions import insert_records
from .ids import resolve_ids
from .db import Store
from .records import record_problems

log = logging.getLogger("protege.store.writer")


class StoreUnavailable(RuntimeError):
    """The database refuses every insert (disk full, read-only, closed): keep the file, retry later."""


def fsync_dir(path: Path) -> None:
    """Make a file's creation (its directory entry) durable, not only its contents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_append(path: Path) -> Any:
    """Open ``path`` unbuffered for appending (a failed write leaves nothing behind in a buffer
    to be written later); when this creates it, fsync its directory too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fh = open(path, "ab", buffering=0)
    if created:
        fsync_dir(path.parent)
    return fh


def _write_all(fh: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = fh.write(view)
        if not n:
            raise OSError("short write")
        view = view[n:]


@dataclass
class LoadResult:
    loaded: int = 0
    duplicates: int = 0
    quarantined: int = 0
    max_seq: int = 0

    def add(self, other: "LoadResult") -> None:
        self.loaded += other.loaded
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        self.max_seq = max(self.max_seq, other.max_seq)


@dataclass
class Quarantine:
    """Lines that cannot be loaded, kept verbatim (with the reason) for a person to look at."""

    path: Path
    count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, line: bytes, reason: str) -> None:
        entry = orjson.dumps({"reason": reason, "line": line.decode("utf-8", "replace")}) + b"\n"
        with self._lock:
            with _open_append(self.path) as fh:
                _write_all(fh, entry)
                os.fsync(fh.fileno())
            self.count += 1
        log.warning("quarantined a capture record in %s: %s", self.path, reason)


def _present(store: Store, batch: list[dict[str, Any]]) -> set[tuple[int | None, str]]:
    seqs = [r["seq"] for r in batch if isinstance(r.get("seq"), int)]
    out: set[tuple[int | None, str]] = set()
    if seqs:
        rows = store.cursor().execute(
            "SELECT seq, id FROM completions WHERE seq IN (SELECT unnest(?::BIGINT[]))", [seqs]
        ).fetchall()
        out = {(int(s), i) for s, i in rows}
    # Journaled without a number (PostgreSQL was unreachable, store/writer.py): the database numbers
    # it at insert, so it is known by its id (Protege's own, unique since migration 5).
    unnumbered = [r["id"] for r in batch if r.get("seq") is None and isinstance(r.get("id"), str) and "upstream_id" in r]
    if unnumbered:
        rows = store.cursor().execute(
            "SELECT id FROM completions WHERE id IN (SELECT unnest(?::VARCHAR[]))", [unnumbered]
        ).fetchall()
        out |= {(None, i) for (i,) in rows}
    return out


def _insert_chunk(store: Store, batch: list[tuple[bytes, dict[str, Any]]], quarantine: Quarantine, result: LoadResult) -> None:
    try:
        present = _present(store, [r for _, r in batch])
    except Exception as exc:
        raise StoreUnavailable(str(exc)) from exc
    fresh: list[tuple[bytes, dict[str, Any]]] = []
    for line, rec in batch:
        key = (rec.get("seq"), rec.get("id"))
        if key in present:  # already stored, or twice in this file (written by two threads at shutdown)
            result.duplicates += 1
        else:
            fresh.append((line, rec))
            if key[0] is not None:
                present.add(key)
    # Records spooled before capture ids were minted by Protege (no ``upstream_id`` key) carry the
    # upstream's id, which may repeat: they go through the same resolution as an import.
    legacy = [i for i, (_, rec) in enumerate(fresh) if "upstream_id" not in rec and isinstance(rec.get("id"), str) and isinstance(rec.get("request"), str)]
    if legacy:
        try:
            skipped = set(resolve_ids(store, [fresh[i][1] for i in legacy]).skipped)
        except Exception as exc:
            raise StoreUnavailable(str(exc)) from exc
        drop = {legacy[k] for k in skipped}
        result.duplicates += len(drop)
        fresh = [f for i, f in enumerate(fresh) if i not in drop]
    if not fresh:
        return
    try:
        insert_records(store, [r for _, r in fresh])
        result.loaded += len(fresh)
        return
    except Exception as exc:
        first_error = exc
    # One at a time, to find the record(s) the table refuses; when none goes in, the database is down.
    ok = 0
    for i, (line, rec) in enumerate(fresh):
        try:
            insert_records(store, [rec])
            ok += 1
        except Exception as exc:
            if ok == 0 and i >= 19 or ok == 0 and i == len(fresh) - 1:
                raise StoreUnavailable(str(first_error)) from exc
            quarantine.put(line, f"insert failed: {exc}")
    result.loaded += ok


def parse_lines(lines: Iterable[bytes], quarantine: Quarantine) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Records from JSONL lines; a line that is not a typed record goes to the quarantine."""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            quarantine.put(line, "not JSON (a torn line after a crash?)")
            continue
        if not isinstance(rec, dict):
            quarantine.put(line, "not a JSON object")
            continue
        if rec.get("seq") is not None and (isinstance(rec["seq"], bool) or not isinstance(rec["seq"], int)):
            rec.pop("seq")
        problems = record_problems(rec)
        if problems:
            quarantine.put(line, "; ".join(problems))
            continue
        yield line, rec


def load_lines(store: Store, lines: Iterable[bytes], quarantine: Quarantine, chunk: int = 5_000) -> LoadResult:
    """Load JSONL records into the store, ``chunk`` at a time (see the module docstring)."""
    result = LoadResult()
    batch: list[tuple[bytes, dict[str, Any]]] = []
    for line, rec in parse_lines(lines, quarantine):
        seq = rec.get("seq")
        if isinstance(seq, int):
            result.max_seq = max(result.max_seq, seq)
            store.seqs_above(seq)
        batch.append((line, rec))
        if len(batch) >= chunk:
            _insert_chunk(store, batch, quarantine, result)
            batch = []
    if batch:
        _insert_chunk(store, batch, quarantine, result)
    return result


def max_seq_in(paths: Iterable[Path]) -> int:
    """The highest ``seq`` in these files, read before anything is numbered in a new process."""
    top = 0
    for path in paths:
        try:
            with open(path, "rb") as fh:
                for line in fh:
                    try:
                        seq = orjson.loads(line).get("seq")
                    except (orjson.JSONDecodeError, AttributeError):
                        continue
                    if isinstance(seq, int) and not isinstance(seq, bool):
                        top = max(top, seq)
        except OSError:
            continue
    return top


class Spool:
    """Append-only JSONL of records that the database refused; loaded back record by record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.quarantine = Quarantine(path.with_name(path.stem + ".quarantine.jsonl"))

    def append(self, records: list[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        with self._lock, _open_append(self.path) as fh:
            start = fh.tell()
            try:
                _write_all(fh, data)
                os.fsync(fh.fileno())
            except OSError:
                try:  # no half record left behind for the next append to follow
                    fh.truncate(start)
                except OSError:
                    pass
                raise

    def exists(self) -> bool:
        return self.path.exists()

    def load_into(self, store: Store) -> int:
        """Write spooled records into the store, then remove the spool. Returns how many loaded.

        Raises :class:`StoreUnavailable` (the spool is kept) when the database takes none."""
        with self._lock:
            if not self.path.exists():
                return 0
            with open(self.path, "rb") as fh:
                result = load_lines(store, fh, self.quarantine)
            self.path.unlink()
            return result.loaded


class Journal:
    """Write-ahead segments of captures not yet in the database (see the module docstring)."""

    def __init__(self, directory: Path, *, segment_bytes: int = 16 * 1024 * 1024, fsync: bool = True) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.quarantine = Quarantine(directory / "quarantine.jsonl")
        self._lock = threading.Lock()
        self._outstanding: dict[int, int] = {}  # segment -> records not yet in the database
        self._fh: Any = None
        self._seg = self._first_free()

    def _first_free(self) -> int:
        return max((n for n, _ in self.segments()), default=0) + 1

    def _path(self, n: int) -> Path:
        return self.dir / f"{n:012d}.jsonl"

    def segments(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.glob("*.jsonl"):
            if p.stem.isdigit():
                out.append((int(p.stem), p))
        return sorted(out)

    def append(self, data: bytes, count: int) -> tuple[int, int, int]:
        """Append ``count`` records' lines durably; returns (segment, start, end) offsets.

        On failure (disk full) the segment is cut back to where it was, so no torn record stays
        in the middle of it, and the error propagates: the caller keeps those records in memory."""
        with self._lock:
            if self._fh is not None and self._outstanding.get(self._seg, 0) == 0 and self._fh.tell() >= 1024 * 1024:
                self._rotate()  # everything in it is in the database: start afresh, delete it
            if self._fh is None:
                self._fh = _open_append(self._path(self._seg))
                self._outstanding.setdefault(self._seg, 0)
            fh, seg = self._fh, self._seg
            start = fh.tell()
        try:
            _write_all(fh, data)
            if self.fsync:
                os.fdatasync(fh.fileno())
        except OSError:
            with self._lock:
                try:
                    fh.truncate(start)
                    fh.seek(start)
                except OSError:  # cannot even cut it back: leave it to the reload's quarantine
                    self._rotate()
            raise
        end = start + len(data)
        with self._lock:
            self._outstanding[seg] = self._outstanding.get(seg, 0) + count
            if end >= self.segment_bytes and seg == self._seg:
                self._rotate()
        return seg, start, end

    def probe(self) -> bool:
        """Can a block be written now? (After a failure, while no capture comes to try it.) The
        block is a blank line, which a reload skips, and is cut off again at once."""
        with self._lock:
            try:
                if self._fh is None:
                    self._fh = _open_append(self._path(self._seg))
                    self._outstanding.setdefault(self._seg, 0)
                start = self._fh.tell()
                _write_all(self._fh, b" " * 4095 + b"\n")
                self._fh.truncate(start)
                self._fh.seek(start)
                return True
            except OSError:
                try:
                    if self._fh is not None:
                        self._fh.truncate(start)
                        self._fh.seek(start)
                except (OSError, UnboundLocalError):
                    pass
                return False

    def _rotate(self) -> None:
        fh, seg = self._fh, self._seg
        self._fh = None
        self._seg += 1
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
        if self._outstanding.get(seg, 0) == 0:
            self._remove(seg)

    def _remove(self, seg: int) -> None:
        self._outstanding.pop(seg, None)
        try:
            self._path(seg).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove capture journal segment %s: %s", seg, exc)

    def read(self, seg: int, start: int, end: int) -> bytes:
        with open(self._path(seg), "rb") as fh:
            fh.seek(start)
            return fh.read(end - start)

    def done(self, seg: int, count: int) -> None:
        """``count`` records of segment ``seg`` are in the database (or the spool)."""
        with self._lock:
            left = self._outstanding.get(seg, 0) - count
            self._outstanding[seg] = left
            if left <= 0 and seg != self._seg:
                self._remove(seg)

    def close(self) -> None:
        """Close the open segment; a segment whose records are all written is deleted."""
        with self._lock:
            self._rotate()

    def pending_segments(self) -> int:
        with self._lock:
            return sum(1 for n in self._outstanding.values() if n > 0)
