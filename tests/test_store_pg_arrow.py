"""PostgreSQL rows streamed into Arrow by COPY (store/pg_arrow.py): every value reads back as the
cursor returns it (NULL vs empty string, quotes, the CSV's own delimiter and quote characters,
newlines, booleans, doubles, jsonb), in exact-size batches in the query's order, and a consumer that
stops early leaves the connection usable (a real server)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from protege.store.pg import PgConnections
from tests import postgres

pytestmark = pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")

SCHEMA = pa.schema([
    ("n", pa.int64()), ("t", pa.string()), ("j", pa.string()), ("i", pa.int32()), ("f", pa.float64()),
    ("b", pa.bool_()),
])
AWKWARD = [
    None, "", '""', "a,b", 'say "hi"', "line\nbreak", "cr\r\nlf", "\x1f", "\x1e", "x\x1ey\x1fz", "\\N", "\\",
    "tab\there", "ünïcødé ’", " padded ", "NULL",
]


@pytest.fixture
def cur(postgres_server):
    conns = PgConnections(postgres_server.database())
    c = conns.cursor()
    c.execute("CREATE TABLE vals (n BIGINT, t TEXT, j JSONB, i INTEGER, f DOUBLE PRECISION, b BOOLEAN)")
    rows = []
    for k in range(5 * len(AWKWARD)):
        text = AWKWARD[k % len(AWKWARD)]
        rows.append([
            k, text, None if k % 7 == 3 else '{"b": [1, "x,\\"y\\""], "a": "' + str(k) + '"}',
            None if k % 5 == 1 else k - 40, None if k % 6 == 2 else k / 3 + 1e-17 * k, None if k % 4 == 3 else k % 2 == 0,
        ])
    c.copy_rows("vals", SCHEMA.names, rows)
    yield c
    conns.close()


def test_values_read_back_as_the_cursor_returns_them(cur):
    sql = "SELECT n, t, j, i, f, b FROM vals ORDER BY n"
    expected = [tuple(r) for r in cur.execute(sql).fetchall()]
    batches = list(cur.arrow_batches(sql, SCHEMA, 7))
    assert [b.num_rows for b in batches] == [7] * 11 + [3]
    assert all(b.schema == SCHEMA for b in batches)
    got = [tuple(r.values()) for b in batches for r in b.to_pylist()]
    assert got == expected
    assert {r[1] for r in got} == set(AWKWARD)
    assert list(cur.arrow_batches(sql.replace("ORDER BY", "WHERE n < 0 ORDER BY"), SCHEMA, 7)) == []


def test_stopping_early_leaves_the_connection_usable(cur):
    batches = cur.arrow_batches("SELECT n, t, j, i, f, b FROM vals ORDER BY n", SCHEMA, 4)
    assert next(batches).num_rows == 4
    batches.close()  # the COPY is cut short mid-stream
    assert cur.execute("SELECT count(*) FROM vals").fetchone() == (80,)
