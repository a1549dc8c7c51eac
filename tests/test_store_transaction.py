"""The store's bulk-write helpers (store/db.transaction, store/db.registered) on a real store of each
backend (a DuckDB file, a PostgreSQL database): a block's statements commit together or not at all,
and a registered batch never outlives its block."""

from __future__ import annotations

import duckdb
import psycopg
import pyarrow as pa
import pytest

from protege.store import Store
from protege.store.db import registered, transaction

# What a failed statement raises on each backend's cursor.
ERRORS = {"duckdb": duckdb.Error, "postgresql": psycopg.Error}


def test_a_block_commits_together_or_rolls_back_and_raises(make_db) -> None:
    store = Store(make_db("t"))
    cur = store.cursor()
    cur.execute("CREATE TABLE t (x INTEGER)")
    with transaction(cur):
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(RuntimeError, match="half way"):
        with transaction(cur):
            cur.execute("INSERT INTO t VALUES (3)")
            raise RuntimeError("half way")
    assert cur.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    with transaction(cur):  # the connection is usable again: no transaction left open
        cur.execute("INSERT INTO t VALUES (4)")
    assert cur.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    store.close()


def test_a_registered_batch_is_readable_in_its_block_only(make_db, backend) -> None:
    error = ERRORS[backend]
    store = Store(make_db("r"))
    cur = store.cursor()
    cur.execute("CREATE TABLE t (x INTEGER)")
    batch = pa.table({"x": pa.array([5, 6], pa.int32())})
    with pytest.raises(error):
        with registered(cur, "_batch", batch), transaction(cur):
            cur.execute("INSERT INTO t SELECT x FROM _batch")
            cur.execute("INSERT INTO t SELECT no_such_column FROM _batch")
    assert cur.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # rolled back
    with pytest.raises(error, match="_batch"):  # and unregistered although the block failed
        cur.execute("SELECT * FROM _batch")
    with registered(cur, "_batch", batch), transaction(cur):
        cur.execute("INSERT INTO t SELECT x FROM _batch")
    assert cur.execute("SELECT x FROM t ORDER BY x").fetchall() == [(5,), (6,)]
    with pytest.raises(error):
        cur.execute("SELECT * FROM _batch")
    store.close()
