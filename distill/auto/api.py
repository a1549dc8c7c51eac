"""HTTP API for automatic distillation: ``/protege/v1/policies...`` and ``/protege/v1/routes...``.

The store is the app's (``app.state.protege_store``, set by ``protege.app.build_app``): one process
writes the DuckDB file, so while ``protege serve`` runs this API is how to change policies or roll
a student back. Errors are OpenAI-style JSON; when admin keys are configured, they are required.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from protege import apikit

router = APIRouter()


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}, status_code=self.status)


def _store(request: Request) -> Any:
    store = getattr(request.app.state, "protege_store", None)
    if store is None:
        raise ApiError(503, "the store is not available in this server", "server_error")
    return store


def _check_admin(request: Request) -> None:
    problem = apikit.admin_key_problem(request, "Policies and routes")
    if problem is not None:
        raise ApiError(401, problem[1], code=problem[0])


def _envelope(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return apikit.list_envelope(data, has_more)


async def _handle(request: Request, fn: Any, *args: Any) -> JSONResponse:
    try:
        _check_admin(request)
        result = await run_in_threadpool(fn, _store(request), *args)
        return JSONResponse(result)
    except ApiError as exc:
        return exc.response()


def _policy(store: Any, ref: str) -> Any:
    from protege.store import auto as store_auto

    row = store_auto.get_policy(store, ref)
    if row is None:
        raise ApiError(404, f"No policy found with id '{ref}'.", param="policy_id", code="policy_not_found")
    return row


# -- policies ---------------------------------------------------------------------------------


@router.get("/protege/v1/policies")
async def list_policies(request: Request) -> JSONResponse:
    def run(store: Any) -> dict[str, Any]:
        from protege.store import auto as store_auto

        from protege.distill.auto.policies import policy_object

        return _envelope([policy_object(r) for r in store_auto.list_policies(store)])

    return await _handle(request, run)


@router.post("/protege/v1/policies")
async def create_policy(request: Request) -> JSONResponse:
    """Create a policy, or replace the one with the same name (the id stays)."""
    try:
        body = await request.json()
    except ValueError:
        return ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json").response()

    def run(store: Any, body: Any) -> dict[str, Any]:
        from protege.distill.auto.policies import PolicyError, parse_policy, policy_object, save_policy

        try:
            policy = parse_policy(body, where="policy")
        except PolicyError as exc:
            raise ApiError(400, exc.message, param=exc.param, code="invalid_policy") from None
        return policy_object(save_policy(store, policy))

    return await _handle(request, run, body)


@router.get("/protege/v1/policies/{policy_id}")
async def get_policy(request: Request, policy_id: str) -> JSONResponse:
    def run(store: Any, ref: str) -> dict[str, Any]:
        from protege.distill.auto.policies import policy_object

        return policy_object(_policy(store, ref))

    return await _handle(request, run, policy_id)


@router.delete("/protege/v1/policies/{policy_id}")
async def delete_policy(request: Request, policy_id: str) -> JSONResponse:
    def run(store: Any, ref: str) -> dict[str, Any]:
        from protege.store import auto as store_auto

        row = _policy(store, ref)
        store_auto.delete_policy(store, row.id)
        return {"id": row.id, "object": "protege.policy.deleted", "deleted": True}

    return await _handle(request, run, policy_id)


@router.get("/protege/v1/policies/{policy_id}/status")
async def policy_status(request: Request, policy_id: str) -> JSONResponse:
    def run(store: Any, ref: str) -> dict[str, Any]:
        from protege.distill.auto.status import policy_status as status

        return status(store, _policy(store, ref))

    return await _handle(request, run, policy_id)


@router.get("/protege/v1/policies/{policy_id}/decisions")
async def policy_decisions(request: Request, policy_id: str) -> JSONResponse:
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        return ApiError(400, "limit must be an integer", param="limit").response()
    if not 1 <= limit <= 1000:
        return ApiError(400, "limit must be between 1 and 1000", param="limit").response()
    after = request.query_params.get("after")

    def run(store: Any, ref: str) -> dict[str, Any]:
        from protege.store import auto as store_auto

        from protege.distill.auto.status import decision_object

        row = _policy(store, ref)
        rows, has_more = store_auto.list_decisions(store, row.id, limit=limit, after=after)
        return _envelope([decision_object(d) for d in rows], has_more)

    return await _handle(request, run, policy_id)


@router.post("/protege/v1/policies/{policy_id}/promote")
async def promote(request: Request, policy_id: str) -> JSONResponse:
    raw = await request.body()
    stage = None
    if raw.strip():
        try:
            import orjson

            body = orjson.loads(raw)
        except ValueError:
            return ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json").response()
        if not isinstance(body, dict) or not isinstance(body.get("stage", ""), (str, type(None))):
            return ApiError(400, "body must be an object like {\"stage\": \"canary\"}", param="stage").response()
        stage = body.get("stage")
        if stage is not None and stage not in ("shadow", "canary", "full"):
            return ApiError(400, f"stage must be shadow, canary or full, not {stage!r}", param="stage").response()

    def run(store: Any, ref: str) -> dict[str, Any]:
        from protege.distill.auto.rollout import AutoError, promote, rollback
        from protege.distill.auto.status import route_object

        row = _policy(store, ref)
        try:
            return route_object(promote(store, row.id, stage))
        except AutoError as exc:
            raise ApiError(409, str(exc), code="cannot_promote") from None

    return await _handle(request, run, policy_id)


@router.post("/protege/v1/policies/{policy_id}/rollback")
async def rollback(request: Request, policy_id: str) -> JSONResponse:
    def run(store: Any, ref: str) -> dict[str, Any]:
        from protege.distill.auto.rollout import AutoError, promote, rollback
        from protege.distill.auto.status import route_object

        row = _policy(store, ref)
        try:
            return route_object(rollback(store, row.id))
        except AutoError as exc:
            raise ApiError(409, str(exc), code="no_live_route") from None

    return await _handle(request, run, policy_id)


# -- routes -----------------------------------------------------------------------------------


@router.get("/protege/v1/routes")
async def list_routes(request: Request) -> JSONResponse:
    include_ended = request.query_params.get("all", "false").lower() in ("1", "true", "yes")

    def run(store: Any) -> dict[str, Any]:
        from protege.store import auto as store_auto

        from protege.distill.auto.status import route_object

        return _envelope([route_object(r) for r in store_auto.list_routes(store, include_ended=include_ended)])

    return await _handle(request, run)


@router.get("/protege/v1/routes/{route_id}")
async def get_route(request: Request, route_id: str) -> JSONResponse:
    def run(store: Any, rid: str) -> dict[str, Any]:
        from protege.store import auto as store_auto

        from protege.distill.auto.status import route_object

        row = store_auto.get_route(store, rid)
        if row is None:
            raise ApiError(404, f"No route found with id '{rid}'.", param="route_id", code="route_not_found")
        return route_object(row)

    return await _handle(request, run, route_id)
