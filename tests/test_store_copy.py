"""Copying a store between backends (store/copy.py): DuckDB into PostgreSQL and back, every table,
resumable, with counts; on real files and a real server."""

from __future__ import annotations

import pyarrow as pa
import pytest

from protege.store import Store, copy_store, count, get_stored, insert_records, list_stored, record_from_completion
from protege.store import auto as store_auto
from protege.store import datasets as store_datasets
from protege.store import feedback as store_feedback
from tests import postgres

pytestmark = pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")


def rec(i: int) -> dict:
    response = {"id": f"up-{i}", "object": "chat.completion", "created": 1_700_000_000 + i, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"a{i}"}, "finish_reason": "stop"}]}
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
    return record_from_completion(response, request, metadata={"env": "prod" if i % 2 else "dev"}, source="proxy",
                                  id=f"chatcmpl-{i}", upstream_id=f"up-{i}")


def seeded(path: str, data_dir) -> Store:
    s = Store(path, data_dir=data_dir)
    insert_records(s, [rec(i) for i in range(25)])
    store_feedback.add_feedback(s, "chatcmpl-3", score=0.5, correction="better")
    row = store_datasets.DatasetVersionRow(id="ds_1", name="d", version=1, created_at=1, counts='{"train": 2}')
    links = pa.table({"seq": pa.array([1, 2], pa.int64()), "completion_id": ["chatcmpl-0", "chatcmpl-1"],
                      "split": ["train", "train"]})
    store_datasets.save_dataset(s, row, links)
    store_auto.put_policy(s, "p", {"model": "gpt-4o-mini"})
    store_auto.create_route(s, store_auto.get_policy(s, "p").id, "protege/s", "canary", match_model="gpt-4o-mini",
                            match_metadata={}, percent=10.0)
    return s


def snapshot(s: Store) -> dict:
    cur = s.cursor()
    return {
        "completions": [tuple(r) for r in cur.execute("SELECT seq, id, created, request, response FROM completions ORDER BY seq").fetchall()],
        "prod": [r["id"] for r in list_stored(s, metadata={"env": "prod"}, limit=100).data],
        "feedback": cur.execute("SELECT id, completion_id, completion_seq, score, correction FROM feedback").fetchall(),
        "links": cur.execute("SELECT dataset_id, seq, completion_id, split FROM dataset_completions ORDER BY seq").fetchall(),
        "datasets": cur.execute("SELECT id, name, version, counts FROM datasets").fetchall(),
        "policies": cur.execute("SELECT id, name, spec, enabled FROM auto_policies").fetchall(),
        "routes": cur.execute("SELECT id, student_model, stage, percent FROM auto_routes").fetchall(),
        "routes_version": store_auto.routes_version(s),
    }


def test_duckdb_to_postgresql_and_back(postgres_server, tmp_path):
    src = seeded(str(tmp_path / "src.duckdb"), tmp_path / "src-data")
    pg = Store(postgres_server.database(), data_dir=tmp_path / "pg-data")
    res = copy_store(src, pg, batch_size=10)
    assert res.copied["completions"] == 25 and res.copied["feedback"] == 1 and res.copied["dataset_completions"] == 2
    assert res.copied["auto_policies"] == 1 and res.copied["auto_routes"] == 1
    assert not any(res.skipped.values())
    assert snapshot(pg) == snapshot(src)
    assert get_stored(pg, "chatcmpl-4")["metadata"] == {"env": "dev"}
    # new captures are numbered after the copied ones
    insert_records(pg, [rec(100)])
    assert pg.cursor().execute("SELECT seq FROM completions WHERE id = 'chatcmpl-100'").fetchone()[0] > 25
    pg.cursor().execute("DELETE FROM completions WHERE id = 'chatcmpl-100'")

    back = Store(str(tmp_path / "back.duckdb"), data_dir=tmp_path / "back-data")
    copy_store(pg, back)
    assert snapshot(back) == snapshot(src)
    for s in (src, pg, back):
        s.close()


def test_an_interrupted_copy_resumes(postgres_server, tmp_path):
    src = seeded(str(tmp_path / "src.duckdb"), tmp_path / "src-data")
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
    assert snapshot(dst) == snapshot(src)
    again = copy_store(src, dst)
    assert not any(again.copied.values())  # a finished copy run again copies nothing
    assert count(dst) == 25
    src.close()
    dst.close()
