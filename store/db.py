"""Opening the embedded DuckDB store.

One :class:`Store` per process. It holds a base DuckDB connection (bulk paths use cursors of it)
and a SQLAlchemy engine whose pooled connections are cursors of that same connection, so that
SQLModel sessions, the capture writer and the query functions all see one database, ``:memory:``
included. Every statement takes its values as bound parameters; no SQL is built from input.
"""

from __future__ import annotations

import itertools
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
from duckdb_engine import ConnectionWrapper
from sqlalchemy.pool import QueuePool
from sqlmodel import Session, create_engine

from .migrations import SCHEMA_VERSION, SchemaTooNewError, migrate


class StoreLockedError(RuntimeError):
    """Another process holds the DuckDB file open for writing."""


class Store:
    def __init__(self, path: str = ":memory:", data_dir: str | Path | None = None, read_only: bool = False) -> None:
        self.path = path
        if path != ":memory:" and not path.startswith(":memory:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():  # e.g. no such directory: DuckDB's own message says it
                raise
            pid = re.search(r"\(PID (\d+)\)", str(exc))
            raise StoreLockedError(
                f"cannot open {path}: it is in use by another process{f' (PID {pid.group(1)})' if pid else ''} "
                "(one process writes a DuckDB file; stop it or query its HTTP API)"
            ) from exc
        self.read_only = read_only
        if data_dir is None:
            data_dir = Path("protege-data") if path.startswith(":memory:") else Path(path).parent / f"{Path(path).stem}-data"
        self.data_dir = Path(data_dir)
        self.engine = create_engine(
            "duckdb://",
            creator=lambda: ConnectionWrapper(self.conn.cursor()),
            poolclass=QueuePool,
            pool_size=4,
            max_overflow=16,
        )
        if not read_only:
            try:
                migrate(self.conn)
            except BaseException:
                self.conn.close()  # release the file lock: the caller gets the error, not a held file
                raise
        self._seq_lock = threading.Lock()
        start = self.conn.execute("SELECT coalesce(max(seq), 0) FROM completions").fetchone()[0]
        self._seq = itertools.count(int(start) + 1)

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT max(version) FROM protege_schema").fetchone()[0])

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection for this thread's bulk or analytical work."""
        return self.conn.cursor()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def next_seqs(self, n: int) -> list[int]:
        """Ordering keys for new completions; one writer process owns the file, so a counter suffices."""
        with self._seq_lock:
            return [next(self._seq) for _ in range(n)]

    def seqs_above(self, seq: int) -> None:
        """Make every later :meth:`next_seqs` value greater than ``seq`` (numbers a crashed
        process had already given to captures that are reloaded from its journal)."""
        with self._seq_lock:
            nxt = next(self._seq)
            self._seq = itertools.count(max(nxt, int(seq) + 1))

    def artifact_dir(self, *parts: str) -> Path:
        path = self.data_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        self.engine.dispose()
        try:
            self.conn.execute("CHECKPOINT")
        except duckdb.Error:
            pass
        self.conn.close()


def open_store(path: str = ":memory:", data_dir: str | Path | None = None, read_only: bool = False) -> Store:
    return Store(path, data_dir=data_dir, read_only=read_only)


__all__ = ["Store", "StoreLockedError", "SchemaTooNewError", "open_store", "SCHEMA_VERSION"]
