"""Opening the store: an embedded DuckDB file (the default) or a PostgreSQL database.

One :class:`Store` per process. On DuckDB it holds a base connection (bulk paths use cursors of
it) and a SQLAlchemy engine whose pooled connections are cursors of that same connection, so that
SQLModel sessions, the capture writer and the query functions all see one database, ``:memory:``
included. Every statement takes its values as bound parameters; no SQL is built from input.

PostgreSQL (``Store("postgresql://user@host:port/dbname")``): the same interface, for several
processes (proxy replicas, workers, the CLI) on one database. How the two backends share the code:

- ``store.cursor()`` is a DuckDB cursor or a :class:`~protege.store.pg.PgCursor`, which has the
  same methods (``?`` placeholders, explicit ``BEGIN``/``COMMIT``, ``register`` of Arrow tables);
  the query modules call it the same way, so most SQL is written once;
- where the dialects differ, a module asks ``store.dialect`` (store/dialect.py, the one place that
  knows both) for the fragment, or branches on ``store.dialect.name`` for a whole statement (the
  bulk insert: Arrow on DuckDB, ``COPY`` on PostgreSQL);
- SQLModel sessions use a psycopg 3 engine on PostgreSQL;
- migrations have a PostgreSQL variant where the SQL differs (store/migrations.py);
- ``seq`` comes from the database's sequence on PostgreSQL (several writers), from a process
  counter on DuckDB (one writer per file).

Credentials come from the URL the user gave or libpq's own variables and password file
(``PGPASSWORD``, ``PGPASSFILE``); Protege never writes them.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import psycopg
from duckdb_engine import ConnectionWrapper
from sqlalchemy.pool import QueuePool
from sqlmodel import Session, create_engine

from .dialect import DUCKDB, POSTGRESQL, Dialect
from .migrations import SCHEMA_VERSION, SchemaTooNewError, migrate
from .pg import PgConnections, PgCursor, is_url, sqlalchemy_url


log = logging.getLogger(__name__)


class StoreLockedError(RuntimeError):
    """Another process holds the DuckDB file open for writing."""


class Store:
    dialect: Dialect = DUCKDB

    def __init__(self, path: str = ":memory:", data_dir: str | Path | None = None, read_only: bool = False) -> None:
        self.path = path
        if is_url(path):
            self._open_postgres(path, data_dir, read_only)
            return
        self._pg: PgConnections | None = None
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

    def _open_postgres(self, url: str, data_dir: str | Path | None, read_only: bool) -> None:
        self.dialect = POSTGRESQL
        self.read_only = read_only
        self.conn = None  # no base connection: each thread has its own (store/pg.py)
        self._pg = PgConnections(url, read_only=read_only)
        # Absolute: a relative default is the directory the process started in, even after a chdir.
        self.data_dir = Path(data_dir if data_dir is not None else "protege-data").absolute()
        self.engine = create_engine(
            sqlalchemy_url(url),
            pool_size=4,
            max_overflow=16,
            pool_pre_ping=True,
            connect_args={"options": "-c default_transaction_read_only=on"} if read_only else {},
        )
        try:
            if not read_only:
                migrate(self._pg.cursor(), dialect=POSTGRESQL.name)
            self._seq_name = self.cursor().execute(
                "SELECT pg_get_serial_sequence('completions', 'seq')"
            ).fetchone()[0]
        except BaseException:
            self.close()
            raise

    @property
    def schema_version(self) -> int:
        return int(self.cursor().execute("SELECT max(version) FROM protege_schema").fetchone()[0])

    def cursor(self) -> duckdb.DuckDBPyConnection | PgCursor:
        """A connection for this thread's bulk or analytical work (a DuckDB cursor, or a
        :class:`PgCursor` on this thread's PostgreSQL connection)."""
        if self._pg is not None:
            return self._pg.cursor()
        return self.conn.cursor()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def next_seqs(self, n: int) -> list[int]:
        """Ordering keys for new completions. One writer process owns a DuckDB file, so a counter
        suffices; on PostgreSQL several replicas write, so they come from the table's sequence."""
        if self._pg is not None:
            if n <= 0:
                return []
            rows = self.cursor().execute(
                "SELECT nextval(?::regclass) FROM generate_series(1, ?)", [self._seq_name, n]
            ).fetchall()
            return [int(r[0]) for r in rows]
        with self._seq_lock:
            return [next(self._seq) for _ in range(n)]

    def seqs_above(self, seq: int) -> None:
        """Make every later :meth:`next_seqs` value greater than ``seq`` (numbers a crashed
        process had already given to captures that are reloaded from its journal).

        On PostgreSQL those numbers came from the sequence itself, so it is already past them
        unless the database was replaced; the sequence is moved forward only in that case (and
        not at all while the server is unreachable: the capture writer must start regardless)."""
        if self._pg is not None:
            try:
                self.cursor().execute(
                    "SELECT CASE WHEN nextval(?::regclass) < ? THEN setval(?::regclass, ?) END",
                    [self._seq_name, int(seq), self._seq_name, int(seq)],
                )
            except psycopg.Error as exc:
                log.warning("could not check the capture sequence against the journal (%s)", exc)
            return
        with self._seq_lock:
            nxt = next(self._seq)
            self._seq = itertools.count(max(nxt, int(seq) + 1))

    def artifact_dir(self, *parts: str) -> Path:
        path = self.data_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        self.engine.dispose()
        if self._pg is not None:
            self._pg.close()
            return
        try:
            self.conn.execute("CHECKPOINT")
        except duckdb.Error:
            pass
        self.conn.close()


@contextmanager
def transaction(cur: Any) -> Iterator[Any]:
    """One explicit transaction on a store cursor (DuckDB or :class:`PgCursor`): committed when
    the block ends, rolled back (and the error raised) when it or the commit fails."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield cur
        cur.execute("COMMIT")
    except Exception:
        cur.execute("ROLLBACK")
        raise


@contextmanager
def registered(cur: Any, name: str, table: Any) -> Iterator[Any]:
    """An Arrow ``table`` readable as ``name`` by the block's statements on ``cur``, and no longer
    after it (bulk writes insert from a registered batch)."""
    cur.register(name, table)
    try:
        yield cur
    finally:
        cur.unregister(name)


def open_store(path: str = ":memory:", data_dir: str | Path | None = None, read_only: bool = False) -> Store:
    return Store(path, data_dir=data_dir, read_only=read_only)


__all__ = ["Store", "StoreLockedError", "SchemaTooNewError", "open_store", "SCHEMA_VERSION"]
