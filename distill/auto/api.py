"""HTTP API for automatic distillation: ``/protege/v1/policies...`` and ``/protege/v1/routes...``.

The store is the app's (``app.state.protege_store``, set by ``protege.app.build_app``): one process
writes the DuckDB file, so while ``protege serve`` runs this API is how to change policies or roll
a student back. Errors are OpenAI-style JSON; when admin keys are configured, they are required.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from protege import apikit
from protege.apikit import ApiError
from protege.distill.auto import rollout
from protege.distill.auto.policies import PolicyError, parse_policy, policy_object, save_policy
from protege.distill.auto.status import decision_object, route_object
from protege.distill.auto.status import policy_status as status
from protege.distill.auto.worker import running_worker
from protege.store import auto as store_auto

router = APIRouter(dependencies=[apikit.admin_only("Policies and routes")])


def _envelope(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return apikit.list_envelope(data, has_more)


async def _handle(store: Any, fn: Any, *args: Any) -> JSONResponse:
    """``fn(store, *args)`` in a worker thread (store calls never run on the event loop)."""
    return JSONResponse(await run_in_threadpool(fn, store, *args))


def _policy(store: Any, ref: str) -> Any:
    row = store_auto.get_policy(store, ref)
    if row is None:
        raise ApiError(404, f"No policy found with id '{ref}'.", param="policy_id", code="policy_not_found")
    return row


# -- policies ---------------------------------------------------------------------------------


@router.get("/protege/v1/policies")
async def list_policies(request: Request, store: Any = Depends(apikit.store)) -> JSONResponse:
    def run(store: Any) -> dict[str, Any]:
        return _envelope([policy_object(r) for r in store_auto.list_policies(store)])

    return await _handle(store, run)


@router.post("/protege/v1/policies")
async def create_policy(request: Request, store: Any = Depends(apikit.store)) -> JSONResponse:
    """Create a policy, or replace the one with the same name (the id stays)."""
    body = await apikit.json_object(request)

    def run(store: Any, body: Any) -> dict[str, Any]:
        try:
            policy = parse_policy(body, where="policy")
        except PolicyError as exc:
            raise ApiError(400, exc.message, param=exc.param, code="invalid_policy") from None
        return policy_object(save_policy(store, policy))

    return await _handle(store, run, body)


@router.get("/protege/v1/policies/{policy_id}")
async def get_policy(request: Request, policy_id: str, store: Any = Depends(apikit.store)) -> JSONResponse:
    def run(store: Any, ref: str) -> dict[str, Any]:
        return policy_object(_policy(store, ref))

    return await _handle(store, run, policy_id)


@router.delete("/protege/v1/policies/{policy_id}")
async def delete_policy(request: Request, policy_id: str, store: Any = Depends(apikit.store)) -> JSONResponse:
    def run(store: Any, ref: str) -> dict[str, Any]:
        row = _policy(store, ref)
        store_auto.delete_policy(store, row.id)
        return {"id": row.id, "object": "protege.policy.deleted", "deleted": True}

    return await _handle(store, run, policy_id)


@router.get("/protege/v1/policies/{policy_id}/status")
async def policy_status(request: Request, policy_id: str, store: Any = Depends(apikit.store)) -> JSONResponse:
    def run(store: Any, ref: str) -> dict[str, Any]:
        return status(store, _policy(store, ref))

    return await _handle(store, run, policy_id)


@router.get("/protege/v1/policies/{policy_id}/decisions")
async def policy_decisions(request: Request, policy_id: str, store: Any = Depends(apikit.store)) -> JSONResponse:
    limit = apikit.parse_limit(request.query_params.get("limit"))
    after = request.query_params.get("after")

    def run(store: Any, ref: str) -> dict[str, Any]:
        row = _policy(store, ref)
        rows, has_more = store_auto.list_decisions(store, row.id, limit=limit, after=after)
        return _envelope([decision_object(d) for d in rows], has_more)

    return await _handle(store, run, policy_id)


@router.post("/protege/v1/policies/{policy_id}/promote")
async def promote(request: Request, policy_id: str, store: Any = Depends(apikit.store)) -> JSONResponse:
    body = await apikit.json_object(request, empty={})  # no body: the next stage
    if not isinstance(body.get("stage", ""), (str, type(None))):
        raise ApiError(400, "body must be an object like {\"stage\": \"canary\"}", param="stage")
    stage = body.get("stage")
    if stage is not None and stage not in ("shadow", "canary", "full"):
        raise ApiError(400, f"stage must be shadow, canary or full, not {stage!r}", param="stage")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ApiError(400, "force must be true or false", param="force")

    def run(store: Any, ref: str) -> dict[str, Any]:
        row = _policy(store, ref)
        try:
            return route_object(rollout.promote(store, row.id, stage, force=force))
        except rollout.AutoError as exc:
            raise ApiError(409, str(exc), code="cannot_promote") from None

    return await _handle(store, run, policy_id)


@router.post("/protege/v1/policies/{policy_id}/rollback")
async def rollback(request: Request, policy_id: str, store: Any = Depends(apikit.store)) -> JSONResponse:
    def run(store: Any, ref: str) -> dict[str, Any]:
        row = _policy(store, ref)
        try:
            return route_object(rollout.rollback(store, row.id))
        except rollout.AutoError as exc:
            raise ApiError(409, str(exc), code="no_live_route") from None

    return await _handle(store, run, policy_id)


# -- the worker -------------------------------------------------------------------------------


@router.get("/protege/v1/worker")
async def worker_status(request: Request, store: Any = Depends(apikit.store)) -> JSONResponse:
    """Whether this server runs the loop (``serve --worker``), its last pass, and per enabled policy
    why it is not acting (``waiting``: below the trigger, min_interval, a fine-tune running)."""

    def run(store: Any) -> dict[str, Any]:
        w = running_worker(store)
        out = w.status() if w is not None else {"object": "protege.worker", "running": False, "interval": None,
                                                 "last_pass_at": None, "last_actions": [], "waiting": []}
        out["policies"] = [status(store, r) for r in store_auto.list_policies(store)]
        return out

    return await _handle(store, run)


# -- routes -----------------------------------------------------------------------------------


@router.get("/protege/v1/routes")
async def list_routes(request: Request, store: Any = Depends(apikit.store)) -> JSONResponse:
    include_ended = request.query_params.get("all", "false").lower() in ("1", "true", "yes")

    def run(store: Any) -> dict[str, Any]:
        return _envelope([route_object(r) for r in store_auto.list_routes(store, include_ended=include_ended)])

    return await _handle(store, run)


@router.get("/protege/v1/routes/{route_id}")
async def get_route(request: Request, route_id: str, store: Any = Depends(apikit.store)) -> JSONResponse:
    def run(store: Any, rid: str) -> dict[str, Any]:
        row = store_auto.get_route(store, rid)
        if row is None:
            raise ApiError(404, f"No route found with id '{rid}'.", param="route_id", code="route_not_found")
        return route_object(row)

    return await _handle(store, run, route_id)
