"""The route table of a replica on PostgreSQL follows route changes made by another process within
``ttl`` seconds, with no request needed to notice them, over one long-lived connection (a check
must not open a connection of its own: a replica runs for weeks)."""

from __future__ import annotations

import time

import pytest

from protege.distill.auto.routing import StoreRouter
from protege.store import Store
from protege.store import auto as store_auto
from tests import postgres

pytestmark = pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")


def _connections(store: Store) -> int:
    return int(store.cursor().execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()[0])


def test_another_replicas_change_is_loaded_without_traffic_over_one_connection(postgres_server, tmp_path):
    db = postgres_server.database()
    here, there, probe = (Store(db, data_dir=tmp_path / n) for n in ("here", "there", "probe"))
    try:
        router = StoreRouter(here, ttl=0.1)
        route = store_auto.create_route(there, "policy_a", "protege/a@v1", "full", match_model="m", match_metadata={},
                                        percent=100.0)  # made through another Store: another replica
        deadline = time.monotonic() + 2.0
        while not router.routes and time.monotonic() < deadline:  # no request: route() is not called
            time.sleep(0.02)
        assert [r.route_id for r in router.routes] == [route.id]
        store_auto.end_route(there, route.id)
        time.sleep(0.5)
        assert router.routes == []
        # A replica under traffic for twenty checks keeps the connections it has.
        before = _connections(probe)
        for _ in range(40):
            assert router.route("m", {}) is None
            time.sleep(0.05)
        assert _connections(probe) == before
    finally:
        for s in (here, there, probe):
            s.close()
