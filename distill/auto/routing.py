"""The proxy's route table: which student takes part in answering a request, looked up in memory.

``route()`` runs on every proxied request (on the event loop), so it only reads memory: active
routes are loaded into dicts keyed by (model, metadata pair). Changes made through this process's
Store are seen at once: the store calls :meth:`StoreRouter.refresh` in the thread that made the
change, after its commit (``store.auto.on_routes_change``). Changes made by another process (another
replica on the same PostgreSQL database, the CLI, a ``protege worker``) are noticed by one
background thread per table that reads the stored ``routes_version`` counter every ``ttl`` seconds
(a one-row primary-key read) and reloads the table when it moved: such a change is served by every
replica within ``ttl`` seconds plus one query (:data:`REFRESH_SECONDS` by default), with or without
traffic. Neither runs on the loop.

Why a version check and not PostgreSQL's LISTEN/NOTIFY: a notification sent while a replica's
listening connection is down is lost, so a replica would need the version check anyway to catch
up after a reconnect; the check alone gives the same bound on both backends, with one connection
per replica and no reconnect logic, at the cost of one tiny query every ``ttl`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from protege.store import auto as store_auto

log = logging.getLogger("protege.distill.auto.routing")

# Seconds between two checks of the stored routes_version: the bound on how late another process's
# route change is served here (plus one query).
REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class Route:
    """Same fields as ``protege.proxy.hooks.Route`` (duck-typed: distill may not import the proxy)."""

    route_id: str
    student_model: str
    stage: Literal["shadow", "canary", "full"]
    percent: float = 100.0  # share of matching requests the student answers (canary), 0-100
    timeout: float = 30.0
    # share of student-served requests also sent to the teacher in the background (agreement after canary)
    compare_percent: float = 0.0


@dataclass(frozen=True)
class _Entry:
    route: Route
    metadata: tuple[tuple[str, str], ...]  # all must be present in the request's metadata


class StoreRouter:
    """``protege.proxy.hooks.Router`` over the routes in the store."""

    def __init__(self, store: Any, ttl: float = REFRESH_SECONDS) -> None:
        self._store = store
        self._auto = store_auto
        self.ttl = ttl
        # (model or None, key, value) -> entries whose first metadata pair is (key, value)
        self._by_pair: dict[tuple[str | None, str, str], list[_Entry]] = {}
        # model or None -> entries without metadata conditions
        self._by_model: dict[str | None, list[_Entry]] = {}
        self._any = False
        self._stored_version = -1
        self._lock = threading.Lock()
        self.refresh()
        store_auto.on_routes_change(store, self.refresh)
        _start_watcher(self)

    # -- hot path -----------------------------------------------------------------------------

    def route(self, model: str | None, metadata: dict[str, str] | None) -> Route | None:
        """The route for a request, from memory (never a query: this runs on the event loop)."""
        if not self._any:
            return None
        md = metadata or {}
        best: _Entry | None = None
        for m in (model, None) if model is not None else (None,):
            for key, value in md.items():
                for entry in self._by_pair.get((m, key, value), ()):
                    if (best is None or len(entry.metadata) > len(best.metadata)) and all(md.get(k) == v for k, v in entry.metadata):
                        best = entry
            if best is not None:
                return best.route
            entries = self._by_model.get(m)
            if entries:
                return entries[0].route
        return None

    # -- loading ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the active routes from the store (blocking: called at start, by the thread that
        changed a route, and by the background re-check; never by ``route()``)."""
        with self._lock:
            stored = self._auto.routes_version(self._store)
            rows = self._auto.active_routes(self._store)
            by_pair: dict[tuple[str | None, str, str], list[_Entry]] = {}
            by_model: dict[str | None, list[_Entry]] = {}
            for row in rows:
                md = orjson.loads(row.match_metadata or "{}")
                route = Route(
                    route_id=row.id, student_model=row.student_model, stage=row.stage,  # type: ignore[arg-type]
                    percent=float(row.percent), timeout=float(row.timeout), compare_percent=float(row.compare_percent),
                )
                entry = _Entry(route, tuple(sorted((str(k), str(v)) for k, v in md.items())))
                if entry.metadata:
                    k, v = entry.metadata[0]
                    by_pair.setdefault((row.match_model, k, v), []).append(entry)
                else:
                    by_model.setdefault(row.match_model, []).append(entry)
            self._by_pair, self._by_model = by_pair, by_model
            self._any = bool(rows)
            self._stored_version = stored

    def check(self) -> bool:
        """Reload if another process changed the routes (blocking: the watcher thread calls it);
        whether it reloaded."""
        if self._auto.routes_version(self._store) == self._stored_version:
            return False
        self.refresh()
        return True

    @property
    def routes(self) -> list[Route]:
        out = [e.route for entries in self._by_pair.values() for e in entries]
        return out + [e.route for entries in self._by_model.values() for e in entries]


def _start_watcher(router: StoreRouter) -> threading.Thread:
    """One daemon thread per route table that calls :meth:`StoreRouter.check` every ``ttl`` seconds.

    It holds the table weakly and ends once the table is gone, so a dropped app leaves no thread
    behind; being one long-lived thread, it reuses one database connection (the store's connections
    are per thread) instead of opening one per check. A failed check (the database restarting, the
    store closing at shutdown) is retried at the next tick."""
    ref = weakref.ref(router)
    ttl = router.ttl

    def watch() -> None:
        while True:
            time.sleep(ttl)
            table = ref()
            if table is None:
                return
            try:
                if table.check():
                    log.info("route table reloaded: routes_version is now %s", table._stored_version)
            except Exception:
                log.debug("route table re-check failed", exc_info=True)
            del table  # no strong reference while waiting

    thread = threading.Thread(target=watch, name="protege-route-watch", daemon=True)
    thread.start()
    return thread
