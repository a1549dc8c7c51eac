"""StoreRouter: in-memory matching by model and metadata, refresh on change, no query per request."""

from __future__ import annotations

import time

from protege.distill.auto.routing import Route, StoreRouter
from protege.store import Store
from protege.store import auto as store_auto


def _route(store, pid, model, md, stage="canary", student="protege/s", percent=10.0):
    return store_auto.create_route(store, pid, student, stage, match_model=model, match_metadata=md, percent=percent,
                                   compare_percent=100.0, timeout=2.0)


def test_matching(tmp_path, store_db) -> None:
    store = Store(store_db, data_dir=tmp_path / "data")
    router = StoreRouter(store)
    assert router.route("gpt-4o", {"task": "intent"}) is None
    a = _route(store, "policy_a", "gpt-4o", {"task": "intent"}, student="protege/a")
    b = _route(store, "policy_b", "gpt-4o", {"task": "intent", "lang": "fr"}, student="protege/b")
    c = _route(store, "policy_c", "gpt-4o", {}, student="protege/c", stage="shadow", percent=0)
    d = _route(store, "policy_d", None, {"team": "x"}, student="protege/d", stage="full", percent=100)
    got = router.route("gpt-4o", {"task": "intent"})
    assert isinstance(got, Route) and got.route_id == a.id and got.stage == "canary" and got.percent == 10.0
    assert got.timeout == 2.0 and got.compare_percent == 100.0
    # the most specific match wins
    assert router.route("gpt-4o", {"lang": "fr", "task": "intent", "user": "u"}).route_id == b.id
    # model-only route for other metadata
    assert router.route("gpt-4o", {"task": "other"}).route_id == c.id
    assert router.route("gpt-4o", {}).route_id == c.id
    # any-model route by metadata
    assert router.route("gpt-3.5", {"team": "x"}).route_id == d.id
    assert router.route(None, {"team": "x"}).route_id == d.id
    assert router.route("gpt-3.5", {"team": "y"}) is None
    assert router.route("gpt-3.5", {}) is None
    # ending a route in this process is seen at once (in-process version counter)
    store_auto.end_route(store, a.id)
    assert router.route("gpt-4o", {"task": "intent"}).route_id == c.id
    store.close()


def test_stage_change_is_seen(tmp_path, store_db) -> None:
    store = Store(store_db, data_dir=tmp_path / "data")
    router = StoreRouter(store)
    r = _route(store, "policy_a", "m", {"k": "v"}, stage="shadow", percent=0)
    assert router.route("m", {"k": "v"}).stage == "shadow"
    store_auto.set_route_stage(store, r.id, "full", 100.0, 0)
    got = router.route("m", {"k": "v"})
    assert got.stage == "full" and got.percent == 100.0
    store.close()


def test_no_query_per_request_and_background_refresh_for_other_writers(tmp_path, store_db) -> None:
    store = Store(store_db, data_dir=tmp_path / "data")
    router = StoreRouter(store, ttl=0.2)
    _route(store, "policy_a", "m", {"k": "v"})
    router.route("m", {"k": "v"})
    calls = {"n": 0}
    real = store_auto.routes_version

    def counting(s):
        calls["n"] += 1
        return real(s)

    store_auto.routes_version = counting  # type: ignore[assignment]
    try:
        for _ in range(10_000):
            router.route("m", {"k": "v"})
        assert calls["n"] <= 1  # at most one background check in the TTL window
        # A change made by "another process": bump the stored counter without the local one.
        store.cursor().execute("UPDATE auto_routes SET percent = 55")
        store.cursor().execute("UPDATE auto_meta SET value = value + 1 WHERE key = 'routes_version'")
        deadline = time.time() + 5
        while router.route("m", {"k": "v"}).percent != 55 and time.time() < deadline:
            time.sleep(0.05)
        assert router.route("m", {"k": "v"}).percent == 55
    finally:
        store_auto.routes_version = real  # type: ignore[assignment]
    store.close()


def test_new_route_replaces_the_policy_s_old_one(tmp_path, store_db) -> None:
    store = Store(store_db, data_dir=tmp_path / "data")
    router = StoreRouter(store)
    old = _route(store, "policy_a", "m", {}, student="protege/a@v1")
    new = _route(store, "policy_a", "m", {}, student="protege/a@v2")
    assert router.route("m", {}).route_id == new.id
    assert not store_auto.get_route(store, old.id).active
    assert [r.id for r in store_auto.active_routes(store)] == [new.id]
    store.close()


def test_a_local_change_is_served_at_once_without_a_query_on_the_event_loop(tmp_path, store_db) -> None:
    """The proxy calls route() on its event loop: after a change made through this process's Store
    (in a worker thread, as the API and the worker make them), the next route() already answers
    with it, and no store call ran on the loop (the changing thread reloaded the table)."""
    import asyncio

    from tests.fixtures.evals import WatchedStore

    store = WatchedStore(store_db, data_dir=tmp_path / "data")
    router = StoreRouter(store, ttl=3600)
    a = _route(store, "policy_a", "m", {"k": "v"}, student="protege/a")
    c = _route(store, "policy_c", "m", {}, student="protege/c", stage="shadow", percent=0)

    async def serve() -> tuple[str, str]:
        before = router.route("m", {"k": "v"}).route_id
        await asyncio.to_thread(store_auto.end_route, store, a.id)
        return before, router.route("m", {"k": "v"}).route_id

    before, after = asyncio.run(serve())
    assert (before, after) == (a.id, c.id)
    assert store.on_loop == []
    store.close()
