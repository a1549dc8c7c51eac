"""Copying a store between backends (store/copy.py): DuckDB into PostgreSQL and back, every table,
resumable, with counts; on real files and a real server."""

from __future__ import annotations

import pytest

from protege.store import Store, copy_store, count, get_stored, insert_records
from protege.store import auto as store_auto
from protege.store import feedback as store_feedback
from protege.store.copy import DestinationHasOwnRows
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


def _with_own_captures(where: str, data_dir) -> Store:
    """A store that captured 5 answers of its own (ids chatcmpl-100..104, seqs 1..5: the numbers
    the seeded source uses too) and took feedback on one."""
    s = Store(where, data_dir=data_dir)
    insert_records(s, [store_record(100 + i) for i in range(5)])
    store_feedback.add_feedback(s, "chatcmpl-101", score=1.0)
    return s


def _seq_of(s: Store) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in s.cursor().execute("SELECT id, seq FROM completions").fetchall()}


@pytest.mark.parametrize("direction", ["duckdb->postgresql", "postgresql->duckdb"])
def test_a_destination_with_captures_of_its_own(postgres_server, tmp_path, direction):
    # The source's seq values (1..25) collide with the destination's own (1..5): a plain copy is
    # refused before anything is written; --append numbers the source's rows after the
    # destination's and re-points everything that names a completion's seq.
    url = postgres_server.database()
    src_at, dst_at = (str(tmp_path / "src.duckdb"), url) if direction.startswith("duckdb") else (url, str(tmp_path / "dst.duckdb"))
    src = seeded_store(src_at, tmp_path / "src-data")
    dst = _with_own_captures(dst_at, tmp_path / "dst-data")
    own = _seq_of(dst)
    src_seq = _seq_of(src)
    # seq watermarks: the route's stage started at capture 10, a cycle covers captures up to 20
    src.cursor().execute("UPDATE auto_routes SET stage_started_seq = 10")
    store_auto.create_cycle(src, store_auto.get_policy(src, "p").id, until_seq=20)
    route_start = src.cursor().execute("SELECT stage_started_seq FROM auto_routes").fetchone()[0]

    with pytest.raises(DestinationHasOwnRows) as refused:
        copy_store(src, dst, batch_size=10)
    assert refused.value.held == 5 and count(dst) == 5  # nothing written

    res = copy_store(src, dst, batch_size=10, append=True)
    assert res.copied["completions"] == 25 and res.copied["feedback"] == 1 and res.copied["dataset_completions"] == 2
    seqs = _seq_of(dst)
    assert len(seqs) == 30 and len(set(seqs.values())) == 30  # one number per capture
    assert {k: seqs[k] for k in own} == own  # the destination's own rows keep theirs
    copied_ids = sorted(src_seq, key=src_seq.get)
    assert min(seqs[i] for i in copied_ids) > max(own.values())  # the copy comes after them ...
    assert sorted(copied_ids, key=seqs.get) == copied_ids  # ... in the source's order
    cur = dst.cursor()
    # every reference to a completion's seq names the same completion as its id
    assert cur.execute("SELECT count(*) FROM feedback f JOIN completions c ON c.id = f.completion_id "
                       "WHERE c.seq = f.completion_seq").fetchone()[0] == 2
    links = cur.execute("SELECT seq, completion_id FROM dataset_completions ORDER BY seq").fetchall()
    assert [(int(s), i) for s, i in links] == [(seqs["chatcmpl-0"], "chatcmpl-0"), (seqs["chatcmpl-1"], "chatcmpl-1")]
    # the route's watermark moved with the numbers: the same captures lie before it
    moved = cur.execute("SELECT stage_started_seq FROM auto_routes").fetchone()[0]
    assert sum(1 for i in copied_ids if seqs[i] <= moved) == sum(1 for v in src_seq.values() if v <= route_start) == 10
    until = cur.execute("SELECT until_seq FROM auto_cycles").fetchone()[0]
    assert sum(1 for i in copied_ids if seqs[i] <= until) == 20

    again = copy_store(src, dst, batch_size=10, append=True)  # a rerun copies nothing
    assert not any(again.copied.values()) and count(dst) == 30
    # a capture after the copy gets a number no row has
    insert_records(dst, [store_record(200)])
    assert _seq_of(dst)["chatcmpl-200"] > max(seqs.values())
    src.close()
    dst.close()


def test_an_interrupted_append_resumes(postgres_server, tmp_path):
    src = seeded_store(str(tmp_path / "src.duckdb"), tmp_path / "src-data")
    dst = _with_own_captures(postgres_server.database(), tmp_path / "dst-data")

    def stop_after_one_batch(table: str, n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_store(src, dst, batch_size=10, progress=stop_after_one_batch, append=True)
    assert count(dst) == 15
    res = copy_store(src, dst, batch_size=10, append=True)
    assert res.copied["completions"] == 15 and res.skipped["completions"] == 10
    seqs = _seq_of(dst)
    assert len(seqs) == 30 and len(set(seqs.values())) == 30
    assert dst.cursor().execute("SELECT count(*) FROM dataset_completions d JOIN completions c "
                                "ON c.id = d.completion_id AND c.seq = d.seq").fetchone()[0] == 2
    src.close()
    dst.close()
