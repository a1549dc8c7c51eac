"""The proxy's route table: which student takes part in answering a request, looked up in memory.

``route()`` runs on every proxied request (on the event loop), so it only reads memory: active
routes are loaded into dicts keyed by (model, metadata pair). Changes made through this process's
Store are seen at once: the store calls :meth:`StoreRouter.refresh` in the thread that made the
change, after its commit (``store.auto.on_routes_change``); changes made by another process are
noticed within ``ttl`` seconds by a re-check in a background thread. Neither runs on the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from protege.store import auto as store_auto

log = logging.getLogger("protege.distill.auto.routing")


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

    def __init__(self, store: Any, ttl: float = 2.0) -> None:
        self._store = store
        self._auto = store_auto
        self.ttl = ttl
        # (model or None, key, value) -> entries whose first metadata pair is (key, value)
        self._by_pair: dict[tuple[str | None, str, str], list[_Entry]] = {}
        # model or None -> entries without metadata conditions
        self._by_model: dict[str | None, list[_Entry]] = {}
        self._any = False
        self._stored_version = -1
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._checking = False
        self.refresh()
        store_auto.on_routes_change(store, self.refresh)

    # -- hot path -----------------------------------------------------------------------------

    def route(self, model: str | None, metadata: dict[str, str] | None) -> Route | None:
        """The route for a request, from memory (never a query: this runs on the event loop)."""
        if time.monotonic() >= self._next_check:
            self._check_in_background()
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
            self._next_check = time.monotonic() + self.ttl

    def _check_in_background(self) -> None:
        if self._checking:
            return
        self._checking = True
        self._next_check = time.monotonic() + self.ttl

        def check() -> None:
            try:
                if self._auto.routes_version(self._store) != self._stored_version:
                    self.refresh()
            except Exception:  # the store closing under us at shutdown; next check retries
                log.debug("route table re-check failed", exc_info=True)
            finally:
                self._checking = False

        threading.Thread(target=check, name="protege-route-check", daemon=True).start()

    @property
    def routes(self) -> list[Route]:
        out = [e.route for entries in self._by_pair.values() for e in entries]
        return out + [e.route for entries in self._by_model.values() for e in entries]
