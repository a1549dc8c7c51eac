"""A PostgreSQL query's rows streamed straight into Arrow record batches, through ``COPY ... TO STDOUT``.

Fetching a million wide rows through a cursor costs a Python tuple and a Python object per value
in the one process that also feeds the converting workers (and a client-side cursor buffers the
whole result in libpq first). ``COPY (query) TO STDOUT (FORMAT csv)`` streams the rows as text
chunks instead, and pyarrow's streaming CSV reader parses them in C++ into typed columns: memory
stays at a few batches, and no per-value Python object is made.

CSV as PostgreSQL writes it: NULL is an unquoted empty field, an empty string a quoted one,
booleans ``t``/``f``, values may hold newlines (inside quotes). The delimiter and quote are the
ASCII unit and record separators, not ``,`` and ``"``: JSON text never holds a raw control
character, so its many quotes and commas are not doubled and quoted (half the parse time); a text
value that does hold one is quoted by PostgreSQL and read back exactly all the same. The reader is
told all of that, so every value reads back as the cursor would have returned it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from pyarrow import csv

# Bytes of CSV text pyarrow parses at a time; batches are re-cut to the caller's row count after.
_BLOCK = 8 << 20
_DELIMITER, _QUOTE = "\x1f", "\x1e"


class _CopyStream(io.RawIOBase):
    """A readable file over a psycopg ``Copy``'s chunks (what pyarrow's CSV reader reads from)."""

    def __init__(self, copy: Any) -> None:
        self._chunks = iter(copy)
        self._buf = memoryview(b"")
        self.total = 0  # bytes read so far

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.total += n
        return n


def copy_batches(pg_cursor: Any, sql: str, schema: pa.Schema, batch_size: int) -> Iterator[pa.RecordBatch]:
    """``sql``'s rows (no parameters) as batches of ``schema`` of exactly ``batch_size`` rows (the
    last one fewer), in the query's order. ``pg_cursor`` is a psycopg cursor."""
    # One thread: the build's converting workers have the other cores.
    read = csv.ReadOptions(column_names=schema.names, block_size=_BLOCK, use_threads=False)
    parse = csv.ParseOptions(delimiter=_DELIMITER, quote_char=_QUOTE, newlines_in_values=True)
    convert = csv.ConvertOptions(
        column_types=schema, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
        true_values=["t"], false_values=["f"],
    )
    options = f"FORMAT csv, DELIMITER e'\\x{ord(_DELIMITER):02x}', QUOTE e'\\x{ord(_QUOTE):02x}'"
    with pg_cursor.copy(f"COPY ({sql}) TO STDOUT ({options})") as copy:
        stream = _CopyStream(copy)
        try:
            reader = csv.open_csv(io.BufferedReader(stream, 1 << 20), read_options=read,
                                  parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid:
            if stream.total == 0:  # no rows: pyarrow calls that an "empty CSV file"
                return
            raise
        yield from _rebatch(reader, schema, batch_size)


def _rebatch(batches: Any, schema: pa.Schema, size: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``size`` rows from batches of any size (the builder's per-batch work,
    such as its label sampling, must not depend on how many bytes the CSV reader took at once)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(pending, schema)
            yield table.slice(0, size).combine_chunks().to_batches()[0]
            rest = table.slice(size)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending, schema).combine_chunks().to_batches()[0]
