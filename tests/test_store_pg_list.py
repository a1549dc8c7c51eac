"""The Stored API's metadata-filtered list on PostgreSQL (store/completions._pg_filtered_page): the
same pages as the DuckDB store for a common pair, a rare pair, both orders, several pairs and
``after`` paging, on the same records (a real server, a real DuckDB file)."""

from __future__ import annotations

import time

import pytest

from protege.store import Store, insert_records, list_stored
from tests import postgres
from tests.fixtures.stores import store_record

pytestmark = pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")


def pages(store: Store, **kw) -> list[list[str]]:
    out, after = [], None
    while True:
        page = list_stored(store, limit=7, after=after, **kw)
        out.append([c["id"] for c in page.data])
        if not page.has_more:
            return out
        after = page.data[-1]["id"]


def test_filtered_pages_match_duckdb(postgres_server, tmp_path):
    records = [store_record(i) for i in range(300)]
    for i, r in enumerate(records):
        r["metadata"] = {"env": "dev" if i % 10 == 0 else "prod", "user": f"u{i % 100}", "rare": "yes" if i == 123 else "no"}
        r["created"] = 1_700_000_000 + i // 3  # ties on created: seq decides
    duck = Store(str(tmp_path / "d.duckdb"), data_dir=tmp_path / "d")
    pg = Store(postgres_server.database(), data_dir=tmp_path / "p")
    for s in (duck, pg):
        insert_records(s, [dict(r) for r in records])
    pg.cursor().execute("ANALYZE completions")
    for kw in ({"metadata": {"env": "dev"}}, {"metadata": {"env": "prod"}, "order": "desc"},
               {"metadata": {"rare": "yes"}}, {"metadata": {"user": "u7", "env": "prod"}},
               {"metadata": {"user": "u7"}, "order": "desc"}, {"metadata": {"env": "nowhere"}}):
        want = pages(duck, **kw)
        assert pages(pg, **kw) == want, kw
        assert sum(len(p) for p in want) == sum(1 for r in records if all(r["metadata"][k] == v for k, v in kw["metadata"].items()))
    duck.close()
    pg.close()


def test_a_plan_past_its_time_gives_way_to_the_other(postgres_server, tmp_path):
    # The mechanism under the filtered list: the first plan is cancelled by the server after
    # PG_PLAN_MS (a statement that sleeps longer stands in for a table scan), its transaction is
    # rolled back, and the same SQL runs again under the other plan's settings, without a limit.
    from protege.store.completions import PG_PLAN_MS, _pg_filtered_page

    pg = Store(postgres_server.database(), data_dir=tmp_path)
    cur = pg.cursor()
    sql = "SELECT current_setting('enable_indexscan'), current_setting('enable_seqscan'), pg_sleep(?) IS NULL"
    t = time.perf_counter()
    rows = _pg_filtered_page(cur, sql, [PG_PLAN_MS * 3 / 1000])
    assert rows == [("off", "off", False)]  # the second run: the GIN plan's settings (no GIN index in that plan)
    assert time.perf_counter() - t >= PG_PLAN_MS * 4 / 1000
    # nothing leaks out of the two transactions: the connection's settings are the defaults again
    assert cur.execute("SELECT current_setting('enable_indexscan'), current_setting('statement_timeout')").fetchone() == ("on", "0")
    pg.close()
