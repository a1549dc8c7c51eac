"""Wiring: the store, the capture writer, the proxy, and every area's HTTP API in one process.

This is the only place (with the CLI) that imports ``protege.proxy``: the proxy receives the
other areas' routers and hooks as arguments, so it never imports them either.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from protege.settings import Settings
from protege.store import CaptureWriter, Store

log = logging.getLogger("protege.app")

# Each area's FastAPI router, mounted when the module exists: "module:attribute".
_ROUTERS = (
    "protege.evals.api:router",
    "protege.distill.datasets.api:router",
    "protege.distill.feedback.api:router",
    "protege.distill.finetune.api:router",
    "protege.distill.auto.api:router",
    "protege.distill.finetune.students_api:router",
    "protege.console:router",  # the web console at /ui
    "protege.cli_api:router",  # POST /protege/v1/cli: the CLI's commands while this server holds the store
)


def _optional(path: str) -> Any | None:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def build_app(settings: Settings, store: Store | None = None) -> tuple[Any, Store, CaptureWriter]:
    """The ASGI app with its store and writer (the writer starts and stops with the app's lifespan)."""
    from protege.proxy import create_app

    from .startup import split_upstream

    split_upstream(settings)  # a refused upstream URL fails before the store is opened
    opened = store is None
    store = store or Store(settings.db, data_dir=settings.data_path)
    writer = CaptureWriter(
        store, max_queue=settings.queue_size, batch_size=settings.batch_size, flush_interval=settings.flush_interval,
        memory_budget=settings.capture_memory_bytes, drain_timeout=settings.drain_timeout,
        journal_fsync=settings.journal_fsync, read_timeout=settings.read_your_writes_timeout,
    )
    # One writer per journal directory: a second process on this data dir fails here, before it
    # listens or replays (and deletes) the journal segment the first is writing.
    try:
        writer.claim()
    except BaseException:
        if opened:
            store.close()
        raise
    routers = [r for r in (_optional(p) for p in _ROUTERS) if r is not None]
    registry_cls = _optional("protege.distill.finetune.students:StudentRegistry")
    local_models = registry_cls(store, timeout=settings.student_timeout) if registry_cls is not None else None
    router_cls = _optional("protege.distill.auto.routing:StoreRouter")
    router = router_cls(store) if router_cls is not None else None
    on_startup, on_shutdown = [], []
    if local_models is not None and hasattr(local_models, "close"):
        on_shutdown.append(local_models.close)  # generation workers of loaded students
    if settings.run_worker:
        worker_cls = _optional("protege.distill.auto.worker:Worker")
        if worker_cls is None:
            raise RuntimeError("the automatic-distillation worker is not available in this install")
        worker = worker_cls(store, settings)
        on_startup.append(worker.start)
        on_shutdown.append(lambda: (worker.stop(), worker.wait_local_jobs()))
    app = create_app(
        settings, store, writer, routers=routers, local_models=local_models, router=router,
        on_startup=on_startup, on_shutdown=on_shutdown,
    )
    # Areas that run background work inside `serve` (the automatic-distillation loop) read these.
    app.state.protege_settings = settings  # type: ignore[attr-defined]
    app.state.protege_store = store  # type: ignore[attr-defined]
    app.state.protege_students = local_models  # type: ignore[attr-defined]
    return app, store, writer


def serve(settings: Settings) -> None:
    """Run the proxy until SIGTERM/SIGINT; uvicorn lets in-flight requests finish, then the
    lifespan drains the capture queue to the store before the process exits.

    Once it listens, the server records its real address beside the database (``store.served``:
    port 0 gives the port the OS chose), so the CLI sends its commands here while this process
    holds the file; the record goes when the server has stopped (a SIGKILL leaves it, and the
    dead PID makes readers ignore it)."""
    import sys

    import uvicorn

    from .serving import RecordedServer
    from .startup import check_exposure

    check_exposure(settings)  # raises StartupError: the CLI shows it as one line
    logging.getLogger().setLevel(settings.log_level.upper())
    app, _store, _writer = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    server = RecordedServer(config, settings.db)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.forget()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE (it logged why)
    if _writer.closed_clean is False:
        # The drain hit its time limit with an insert still running: what the database lacks is in
        # the journal, and DuckDB replays its own WAL on the next open. Exiting now skips the
        # interpreter's teardown, where DuckDB would wait for that insert and checkpoint on the
        # same slow disk (measured: 10 s past the limit).
        logging.shutdown()
        os._exit(0)

