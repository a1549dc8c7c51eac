"""One capture writer per journal directory: an exclusive ``flock`` held for the writer's lifetime.

A capture writer replays and deletes the journal segments it finds at start-up (they are what an
earlier process left). Two writers on one directory would break that: on PostgreSQL several
replicas share a database, and two started in one working directory both default to
``./protege-data``, so the second would replay and delete the first's open segment, and the first's
later captures would go to an unlinked file, lost on a crash. The lock makes the second fail at
start-up instead, naming the directory, the holder's PID and the fix. (On DuckDB the database file
is single-writer already; the lock is harmless there.)

``flock`` belongs to the open file, so the kernel drops it when the holder exits, however it exits
(a SIGKILLed replica leaves no stale lock); the file itself stays, holding the last holder's PID.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import BinaryIO

LOCK_NAME = "writer.lock"


class JournalInUseError(RuntimeError):
    """Another live process (or writer) holds the journal directory."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        holder = f"PID {pid}" if pid else "PID unknown"
        super().__init__(
            f"the capture journal {directory} is in use by another Protege process ({holder}): "
            "give each replica its own --data-dir"
        )
        self.directory = directory
        self.pid = pid


class DirLock:
    """The exclusive, non-blocking lock on ``directory / writer.lock`` (created as needed)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        self._fh: BinaryIO | None = None  # a file object: a writer dropped without close() frees it

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`JournalInUseError` at once. Idempotent while held."""
        if self._fh is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fh.fileno())
            fh.close()
            raise JournalInUseError(self.directory, pid) from None
        except BaseException:
            fh.close()
            raise
        try:  # who holds it, for the next one's message; a full disk must not stop the writer starting
            os.ftruncate(fh.fileno(), 0)
            os.pwrite(fh.fileno(), f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fh = fh

    def release(self) -> None:
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        finally:
            fh.close()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


__all__ = ["LOCK_NAME", "DirLock", "JournalInUseError"]
