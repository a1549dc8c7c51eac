"""HTTP API for eval runs under ``/protege/v1/evals`` (mounted by protege.app).

A POST starts a run in the background of the server process (the process that owns the DuckDB
file) and returns at once with the queued run; clients follow it with GET until ``completed``.
Runs that were in progress when the server stopped are continued with ``POST .../{id}/resume``.
Handlers reach the store in worker threads (``asyncio.to_thread``): this loop also serves the proxy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from protege.store import evals as db

from protege import apikit
from protege.apikit import ApiError

from .report import FORMATS, render_report
from .runs import RunSpec, RunSpecError, create_run, execute_run, run_object

log = logging.getLogger("protege.evals.api")

# When the server has admin keys, eval runs (they read captured traffic) need one.
router = APIRouter(prefix="/protege/v1/evals", tags=["evals"], dependencies=[apikit.admin_only("Eval runs")])

# Strong references to background runs (asyncio keeps only weak ones), by run id.
_tasks: dict[str, asyncio.Task] = {}
# Every run this process has started (added on the loop before its task runs, never removed): their
# status is theirs to write. Handlers read runs in worker threads, so a status read there may predate
# a task that started or finished meanwhile; only runs outside this set may be reconciled.
_started: set[str] = set()


def _error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> ApiError:
    return ApiError(status, message, type=type, param=param, code=code)


def _start(store: Any, run_id: str) -> None:
    async def runner() -> None:
        try:
            await execute_run(store, run_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the run row records the failure
            log.warning("eval run %s did not complete", run_id)
        finally:
            _tasks.pop(run_id, None)

    _started.add(run_id)
    _tasks[run_id] = asyncio.get_running_loop().create_task(runner())


def _reconcile(store: Any, run: dict[str, Any]) -> dict[str, Any]:
    """This process owns the store, so a queued/running run that this process never started was cut
    off (a restart or crash): show it as canceled with the reason, and resumable."""
    if run["status"] in ("queued", "in_progress") and run["id"] not in _started:
        error = {"code": "interrupted", "message": "the server stopped during this run; POST .../resume to continue"}
        db.update_run(store, run["id"], status="canceled", error=error)
        run = {**run, "status": "canceled", "error": error}
    return run


def _list_page(store: Any, after: str | None, limit: int, order: str) -> tuple[list[dict[str, Any]], bool]:
    """A page of public run objects (store work: called in a worker thread)."""
    runs, has_more = db.list_runs(store, after=after, limit=limit, order=order)
    return [run_object(store, _reconcile(store, r)) for r in runs], has_more


def _run_view(store: Any, run_id: str) -> dict[str, Any] | None:
    """One public run object, or None (store work: called in a worker thread)."""
    run = db.get_run(store, run_id)
    return None if run is None else run_object(store, _reconcile(store, run))


def _not_found(run_id: str) -> ApiError:
    return _error(404, f"No eval run found with id '{run_id}'.", param="run_id", code="not_found")


@router.post("")
async def create_eval_run(request: Request, store: Any = Depends(apikit.store)) -> Response:
    try:
        body = await request.json()
    except ValueError:
        raise _error(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise _error(400, "The request body must be a JSON object.")
    if "items_file" in body:
        raise _error(400, "items_file is not accepted over HTTP; send the items inline as 'items'.", param="items_file")
    try:
        spec = RunSpec.from_dict(body)
    except (RunSpecError, TypeError) as exc:
        raise _error(400, str(exc)) from None
    from .egress import credential_problem

    problem = credential_problem(spec.candidates, spec.metrics, getattr(request.app.state, "protege_settings", None))
    if problem is not None:
        raise _error(400, problem[0], param=problem[1], code="credential_host_not_allowed")
    try:
        run = await asyncio.to_thread(create_run, store, spec)
    except RunSpecError as exc:
        raise _error(400, str(exc)) from None
    _start(store, run["id"])
    return JSONResponse(run)


@router.get("")
async def list_eval_runs(
    after: str | None = None, order: str = "desc", limit: int = Depends(apikit.limit), store: Any = Depends(apikit.store)
) -> Response:
    if order not in ("asc", "desc"):
        raise _error(400, "order must be 'asc' or 'desc'.", param="order")
    data, has_more = await asyncio.to_thread(_list_page, store, after, limit, order)
    return JSONResponse(apikit.list_envelope(data, has_more))


@router.get("/{run_id}")
async def get_eval_run(run_id: str, store: Any = Depends(apikit.store)) -> Response:
    view = await asyncio.to_thread(_run_view, store, run_id)
    if view is None:
        raise _not_found(run_id)
    return JSONResponse(view)


@router.post("/{run_id}/resume")
async def resume_eval_run(run_id: str, store: Any = Depends(apikit.store)) -> Response:
    run = await asyncio.to_thread(db.get_run, store, run_id)
    if run is None:
        raise _not_found(run_id)
    if run_id in _tasks:
        raise _error(409, f"Eval run '{run_id}' is already running.", code="run_in_progress")
    _start(store, run_id)
    return JSONResponse(await asyncio.to_thread(run_object, store, {**run, "status": "in_progress", "error": None}))


@router.get("/{run_id}/report")
async def eval_run_report(run_id: str, format: str = "html", store: Any = Depends(apikit.store)) -> Response:
    if format not in FORMATS:
        raise _error(400, f"format must be one of {', '.join(FORMATS)}.", param="format")
    if await asyncio.to_thread(db.get_run, store, run_id) is None:
        raise _not_found(run_id)
    try:
        text = await asyncio.to_thread(render_report, store, run_id, format)
    except ValueError as exc:
        raise _error(409, str(exc), code="run_not_completed") from None
    return Response(text, media_type=FORMATS[format])


__all__ = ["router"]
