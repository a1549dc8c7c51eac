"""Copying a store between backends (store/copy.py): DuckDB into PostgreSQL and back, every table,
resumable, with counts; on real files and a real server."""

from __future__ import annotations

import pytest

from protege.store import Store, copy_store, count, get_stored, insert_records
from tests import postgres
from tests.fixtures.stores import seeded_store, store_record, store_snapshot

pytestmark = pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")


def test_duckdb_to_postgresql_and_back(postgres_server, tmp_path):
    src = seeded_store(str(tmp_path / "src.duckdb"), tmp_path / "src-data")
    pg = Store(postgres_server.database(), data_dir=tmp_path / "pg-data")
    res = copy_store(src, pg, batch_size=10)
    assert res.copied["completions"] == 25 and res.copied["feedback"] == 1 and res.copied["dataset_completions"] == 2
    assert res.copied["auto_policies"] == 1 and res.copied["auto_routes"] == 1
    assert not any(res.skipped.values())
    assert store_snapshot(pg) == store_snapshot(src)
    assert get_stored(pg, "chatcmpl-4")["metadata"] == {"env": "dev"}
    # new captures are numbered after the copied ones
    insert_records(pg, [store_record(100)])
    assert pg.cursor().execute("SELECT seq FROM completions WHERE id = 'chatcmpl-100'").fetchone()[0] > 25
    pg.cursor().execute("DELETE FROM completions WHERE id = 'chatcmpl-100'")

    back = Store(str(tmp_path / "back.duckdb"), data_dir=tmp_path / "back-data")
    copy_store(pg, back)
    assert store_snapshot(back) == store_snapshot(src)
    for s in (src, pg, back):
        s.close()


def test_an_interrupted_copy_resumes(postgres_server, tmp_path):
    src = seeded_store(str(tmp_path / "src.duckdb"), tmp_path / "src-data")
    dst = Store(postgres_server.database(), data_dir=tmp_path / "dst-data")
    seen: list[int] = []

    def stop_after_two_batches(table: str, n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt  # the user pressed ^C mid-copy

    with pytest.raises(KeyboardInterrupt):
        copy_store(src, dst, batch_size=10, progress=stop_after_two_batches)
    assert count(dst) == 20  # two batches in
    res = copy_store(src, dst, batch_size=10)
    assert res.copied["completions"] == 5 and res.skipped["completions"] == 20
    assert store_snapshot(dst) == store_snapshot(src)
    again = copy_store(src, dst)
    assert not any(again.copied.values())  # a finished copy run again copies nothing
    assert count(dst) == 25
    src.close()
    dst.close()
