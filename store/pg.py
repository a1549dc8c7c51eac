"""PostgreSQL connections shaped like DuckDB cursors, so that the store's query modules keep one form.

The store's modules call ``store.cursor().execute(sql, params)`` with ``?`` placeholders,
``fetchone``/``fetchall``/``fetchmany``, explicit ``BEGIN TRANSACTION``/``COMMIT``, and
``register(name, arrow_table)`` for bulk work. :class:`PgCursor` gives a psycopg 3 connection that
shape:

- ``?`` placeholders become psycopg's ``%s`` (outside quoted literals and identifiers), and a
  literal ``%`` is doubled, so the SQL text of both backends is the same where the dialects agree;
- connections are in autocommit mode, as DuckDB's are: a statement is its own transaction unless
  the caller opened one with ``BEGIN``;
- ``jsonb`` values come back as their text (the DuckDB store keeps JSON as ``VARCHAR``), so callers
  parse JSON the same way on both backends;
- ``register`` loads an Arrow table into a temporary table with ``COPY`` (DuckDB scans the Arrow
  table in place; PostgreSQL needs the rows on the server), ``unregister`` drops it.

Each thread gets its own connection (:class:`PgConnections`), like each DuckDB cursor is its own
connection to the file: the capture writer, the request threads and the CLI never share a
transaction. Credentials are libpq's (``PGPASSWORD``, ``PGPASSFILE``/``~/.pgpass``, ``PGUSER``, ...):
Protege passes the URL it was given and writes no secret anywhere.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Iterable, Iterator, Sequence

import psycopg
import pyarrow as pa
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.string import TextLoader

from .pg_arrow import copy_batches

# Arrow column type -> PostgreSQL type, for registered (temporary) tables.
_PG_TYPES: dict[pa.DataType, str] = {
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.int16(): "SMALLINT",
    pa.float64(): "DOUBLE PRECISION",
    pa.float32(): "REAL",
    pa.bool_(): "BOOLEAN",
    pa.string(): "TEXT",
    pa.large_string(): "TEXT",
}

# A quoted literal, a quoted identifier, a dollar-quoted body, a comment, a ``?`` or a ``%``.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$\$.*?\$\$|--[^\n]*|\?|%", re.S)


def translate(sql: str) -> str:
    """DuckDB's ``?`` placeholders as psycopg's ``%s`` (and ``%`` as ``%%``), outside literals."""

    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "?":
            return "%s"
        if tok == "%":
            return "%%"
        return tok

    return _TOKENS.sub(sub, sql)


# A JSON \u0000 escape (preceded by an even number of backslashes, so not itself escaped text).
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def jsonb_safe(text: str) -> str:
    """JSON text that ``jsonb`` accepts: PostgreSQL text cannot hold U+0000, so an escaped NUL in a
    string becomes U+FFFD (the replacement character) instead of failing the whole batch."""
    return _NUL_ESCAPE.sub(lambda m: m.group(1) + "\\ufffd", text) if "\\u0000" in text else text


# A session's memory for temporary tables (PostgreSQL's default is 8 MB; it is taken only as
# temporary tables fill, and can be set only before a session first uses one). A dataset build's
# selection writes ~1M candidate rows into one: with 8 MB they go through temp files, 10 s of a
# 1M-row build's 35 s of SQL (docs/benchmarks.md).
TEMP_BUFFERS = "256MB"


def connect(url: str, read_only: bool = False, application_name: str | None = None) -> psycopg.Connection:
    """One autocommit connection whose ``jsonb``/``json`` columns read back as text
    (``application_name``: what pg_stat_activity shows for it)."""
    extra: dict[str, str] = {}
    # Server settings for the session, after any the URL gives (``?options=...``): kwargs replace
    # the URL's options, so they are carried over.
    options = [conninfo_to_dict(url).get("options") or "", f"-c temp_buffers={TEMP_BUFFERS}"]
    if read_only:
        options.append("-c default_transaction_read_only=on")
    extra["options"] = " ".join(o for o in options if o)
    if application_name:
        extra["application_name"] = application_name
    conn = psycopg.connect(url, autocommit=True, **extra)
    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, TextLoader)
    return conn


class PgCursor:
    """A psycopg cursor with the DuckDB cursor methods the store uses."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.connection = conn
        self._cur = conn.cursor()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> "PgCursor":
        if params:
            self._cur.execute(translate(sql), list(params))
        else:
            self._cur.execute(sql)
        return self

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence[Any]]) -> "PgCursor":
        self._cur.executemany(translate(sql), [list(p) for p in seq_of_params])
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall()

    def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        return self._cur.fetchmany(size)

    @property
    def description(self) -> Any:
        return self._cur.description

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """``COPY table (columns) FROM STDIN``: the bulk path (one round trip for the whole batch)."""
        with self._cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def arrow_batches(self, sql: str, schema: pa.Schema, batch_size: int) -> Iterator[pa.RecordBatch]:
        """A query's rows as Arrow batches of ``schema`` (streamed by COPY; see :mod:`.pg_arrow`)."""
        return copy_batches(self._cur, sql, schema, batch_size)

    def register(self, name: str, table: pa.Table) -> None:
        """Make an Arrow table queryable as ``name`` (a temporary table loaded by COPY)."""
        cols = ", ".join(f"{f.name} {_PG_TYPES[f.type]}" for f in table.schema)
        self._cur.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")
        self._cur.execute(f"CREATE TEMP TABLE {name} ({cols})")
        columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
        self.copy_rows(name, table.schema.names, zip(*columns))

    def unregister(self, name: str) -> None:
        self._cur.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")

    def interrupt(self) -> None:
        """Cancel the statement running on this connection (DuckDB's ``interrupt``), from another thread."""
        self.connection.cancel_safe(timeout=5.0)

    def close(self) -> None:
        self._cur.close()


class PgConnections:
    """One connection per thread, all closed by :meth:`close` (a broken one is replaced)."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[psycopg.Connection] = []
        self._closed = False

    def get(self) -> psycopg.Connection:
        if self._closed:  # as a closed DuckDB connection: every later use fails
            raise psycopg.OperationalError("the store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.url, self.read_only)
            self._local.conn = conn
            with self._lock:
                self._all = [c for c in self._all if not c.closed]
                self._all.append(conn)
        return conn

    def cursor(self) -> PgCursor:
        return PgCursor(self.get())

    def dedicated(self, application_name: str | None = None) -> psycopg.Connection:
        """A connection of the caller's own (not this thread's), closed with the others by
        :meth:`close`: what holds a session-level lock that must end when the store is closed."""
        if self._closed:
            raise psycopg.OperationalError("the store is closed")
        conn = connect(self.url, self.read_only, application_name=application_name)
        with self._lock:
            self._all = [c for c in self._all if not c.closed]
            self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except psycopg.Error:
                pass


def is_url(path: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a DuckDB file."""
    return path.startswith(("postgresql://", "postgres://"))


def without_password(url: str) -> str:
    """A database URL as it may be logged or shown: its password (if the URL carries one) as ``***``."""
    return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:***@", url)


def sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy's psycopg 3 driver."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]
