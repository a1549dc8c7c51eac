"""``create_app``: a small raw-ASGI layer for the hot path in front of a FastAPI app for the rest.

FastAPI routing and request objects cost ~25% of throughput on the reference machine (measured
when the proxy was designed; bench/bench_proxy.py measures it as built), so chat-completion creates and the ``/v1/*`` passthrough
never reach it; the Stored Completions API, ``/healthz``, ``/metrics`` and other areas' routers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Callable, Sequence

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.routing import Match

from protege import apikit
from protege.keys import admin_denial
from protege.settings import Settings
from protege.store import CaptureWriter, Store

from . import errors
from .auth import client_key
from .forward import ChatForwarder
from .hooks import LocalModels, Router
from .metrics import Metrics
from .models_list import ModelsList
from .passthrough import Passthrough
from .paths import encode, normalise, stored_api_shape
from .stored_api import stored_router
from .upstream import Upstream

log = logging.getLogger("protege.proxy")

# Admin-only whenever any key is configured: Protege's own API and the API's description (the
# Stored Completions routes check the same rule themselves). /healthz and /metrics stay open.
_ADMIN_PREFIXES = ("/protege/",)
_ADMIN_PATHS = frozenset({"/protege", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _admin_only(path: str) -> bool:
    lowered = path.lower()  # routes are case-sensitive, but guard what a looser server might accept
    return lowered in _ADMIN_PATHS or lowered.startswith(_ADMIN_PREFIXES)


_CHAT_SHAPES = {"/v1/chat/completions": "v1", "/openai/v1/chat/completions": "azure_v1"}
_DEPLOYMENTS = "/openai/deployments/"
_CHAT_SUFFIX = "/chat/completions"


class ProxyApp:
    """The ASGI callable uvicorn runs. ``state`` is the FastAPI app's, so ``app.state.x`` works."""

    def __init__(self, api: FastAPI, chat: ChatForwarder, passthrough: Passthrough, upstream: Upstream, writer: CaptureWriter, store: Store, metrics: Metrics) -> None:
        self.api = api
        self.chat = chat
        self.passthrough = passthrough
        self.upstream = upstream
        self.writer = writer
        self.store = store
        self.metrics = metrics
        settings = api.state.protege_settings
        self.proxy_keys = list(settings.proxy_keys)
        self.admin_keys = list(settings.admin_keys)
        self.keyed = bool(self.proxy_keys or self.admin_keys)
        self.models: ModelsList | None = None  # GET /v1/models with the students merged in

    @property
    def state(self) -> Any:
        return self.api.state

    def _api_serves(self, scope: dict) -> bool:
        """Another area's router may serve OpenAI-shaped paths (e.g. /v1/files): those win over the passthrough."""
        return any(route.matches(scope)[0] is Match.FULL for route in self.api.router.routes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = normalise(scope["path"])
            if path != scope["path"]:  # route (and forward) what a server would make of the path
                scope = dict(scope, path=path, raw_path=encode(path).encode("ascii"))
            method = scope["method"]
            if self.keyed and _admin_only(path):
                denial = admin_denial(client_key(scope["headers"])[0], self.proxy_keys, self.admin_keys, "Protege's own API")
                if denial is not None:
                    self.metrics.request("api", denial.status)
                    return await errors.send_error(send, denial.status, denial.message, denial.type, code=denial.code)
            if method == "POST":
                shape = _CHAT_SHAPES.get(path)
                if shape is not None:
                    return await self.chat(scope, receive, send, shape)
                if path.startswith(_DEPLOYMENTS) and path.endswith(_CHAT_SUFFIX):
                    dep = path[len(_DEPLOYMENTS) : -len(_CHAT_SUFFIX)]
                    if dep and "/" not in dep:
                        return await self.chat(scope, receive, send, "deployment", dep)
            if self.models is not None and self.models.serves(method, path):
                return await self.models(scope, receive, send)
            forwardable = path.startswith(("/v1/", "/openai/v1/")) or (self.upstream.azure and path.startswith("/openai/"))
            if forwardable and not stored_api_shape(path) and not self._api_serves(scope):
                return await self.passthrough(scope, receive, send)
        if scope["type"] != "http":
            return await self.api(scope, receive, send)
        metrics = self.metrics

        async def counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                metrics.request("api", message["status"])
            await send(message)

        await self.api(scope, receive, counted)


def create_app(
    settings: Settings,
    store: Store,
    writer: CaptureWriter,
    *,
    routers: Sequence[APIRouter] = (),
    local_models: LocalModels | None = None,
    router: Router | None = None,
    on_startup: Sequence[Callable[[], None]] = (),
    on_shutdown: Sequence[Callable[[], None]] = (),
) -> ProxyApp:
    """The proxy as an ASGI app. Its lifespan starts the writer and the upstream session, and on
    shutdown waits for background (shadow) work, writes every queued capture, and closes the store."""
    metrics = Metrics()
    upstream = Upstream(settings)
    chat = ChatForwarder(settings, upstream, writer, metrics, local_models=local_models, router=router)
    allowed = list(settings.proxy_keys) + list(settings.admin_keys) if settings.proxy_keys else []
    passthrough = Passthrough(upstream, metrics, allowed, settings.max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if getattr(writer, "_thread", None) is None:
            writer.start()
        await upstream.start()
        for hook in on_startup:
            hook()
        try:
            yield
        finally:
            for hook in on_shutdown:  # e.g. the distillation worker: stopped while the store is open
                await asyncio.to_thread(hook)
            await chat.drain()
            await upstream.close()
            # Bounded (drain_timeout): what the database has not taken by then stays in the journal.
            if await asyncio.to_thread(writer.close):
                try:
                    store.close()
                except Exception as exc:  # already closed by its owner
                    log.debug("store close: %s", exc)
            else:  # an insert may still be running: leave the file to DuckDB's own recovery
                log.warning("capture writer did not finish in time; the store is left for the next start to recover")

    # Swagger UI's assets are served from the package (fastapi-offline), not from a CDN: /docs
    # works on a machine with no internet access. Both /docs and /openapi.json need an admin key
    # whenever keys are configured (they describe the admin API).
    api = FastAPIOffline(title="Protege", lifespan=lifespan, redoc_url=None)
    api.state.protege_settings = settings

    apikit.install(api)  # OpenAI-style error JSON for every router's ApiError, unknown paths and methods

    @api.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        # 503 while captures are at risk (a disk refuses them, or the memory budget overflowed):
        # the proxy still answers, but a load balancer should send new traffic to an instance
        # that can keep it, while this one writes out what it holds. Most balancers fail open
        # when every instance is unhealthy, so this never takes a lone proxy out of service.
        health = writer.health()
        body = {"status": health["status"], "capture_queue": writer.depth, "capture": health}
        return JSONResponse(body, status_code=200 if health["status"] == "ok" else 503)

    @api.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(writer), media_type="text/plain; version=0.0.4")

    api.state.protege_writer = writer  # other areas' routers (feedback) read their writes through it
    api.include_router(stored_router(store, list(settings.proxy_keys), list(settings.admin_keys), writer=writer))
    for r in routers:
        api.include_router(r)
    proxy = ProxyApp(api, chat, passthrough, upstream, writer, store, metrics)
    if local_models is not None:
        proxy.models = ModelsList(upstream, local_models, metrics, allowed)
    return proxy
