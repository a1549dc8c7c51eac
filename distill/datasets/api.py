"""Protege's own HTTP API for datasets (``/protege/v1/datasets``).

The app that mounts :data:`router` provides the store as ``app.state.protege_store`` (and its
settings as ``app.state.protege_settings``: with admin keys configured, these routes need one,
since they expose and curate captured traffic). Lists use OpenAI's
envelope and cursor (``after``/``limit``); errors use OpenAI's error JSON, so the ``openai`` SDK's
error handling works on these routes too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from protege import apikit

router = APIRouter()


def error(status: int, message: str, param: str | None = None, code: str | None = None, type_: str = "invalid_request_error") -> JSONResponse:
    return apikit.error_response(status, message, type_=type_, param=param, code=code)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def _envelope(data: list[dict[str, Any]], has_more: bool) -> Response:
    return _json(apikit.list_envelope(data, has_more))


def _store(request: Request):
    store = getattr(request.app.state, "protege_store", None)
    if store is None:  # pragma: no cover - protege.app always sets it
        raise RuntimeError("the app has no store (app.state.protege_store)")
    return store


def _denied(request: Request) -> JSONResponse | None:
    return apikit.admin_denied(request, "Feedback and datasets")


async def _body(request: Request) -> dict[str, Any] | JSONResponse:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error(400, "We could not parse the JSON body of your request.", code="invalid_json")
    if not isinstance(body, dict):
        return error(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def _limit(request: Request, default: int = 20, maximum: int = 100) -> int | JSONResponse:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return error(400, f"Invalid 'limit': expected an integer, got {raw!r}.", param="limit", code="invalid_type")
    if not 1 <= value <= maximum:
        return error(400, f"Invalid 'limit': must be between 1 and {maximum}.", param="limit", code="integer_out_of_range")
    return value


@router.post("/protege/v1/datasets")
async def create_dataset(request: Request) -> Response:
    """Build a dataset version synchronously (builds are seconds, not minutes, at 1M rows)."""
    denied = _denied(request)
    if denied is not None:
        return denied
    from protege.distill.datasets.builder import DatasetError, DatasetOptions, build_dataset

    body = await _body(request)
    if isinstance(body, JSONResponse):
        return body
    if not body.get("name"):
        return error(400, "Missing required parameter: 'name'.", param="name", code="missing_required_parameter")
    try:
        opts = DatasetOptions.from_dict(body)
    except DatasetError as exc:
        return error(400, str(exc), code="invalid_value")
    except TypeError as exc:
        return error(400, f"Invalid dataset options: {exc}", code="invalid_value")
    try:
        dv = await asyncio.to_thread(build_dataset, _store(request), opts)
    except DatasetError as exc:
        return error(400, str(exc), code="empty_dataset")
    return _json(dv.to_dict())


@router.get("/protege/v1/datasets")
async def list_datasets_route(request: Request) -> Response:
    denied = _denied(request)
    if denied is not None:
        return denied
    from protege.distill.datasets.builder import list_datasets

    limit = _limit(request)
    if isinstance(limit, JSONResponse):
        return limit
    items, has_more = await asyncio.to_thread(
        list_datasets, _store(request), name=request.query_params.get("name"), after=request.query_params.get("after"), limit=limit
    )
    return _envelope([d.to_dict() for d in items], has_more)


@router.get("/protege/v1/datasets/{dataset_id}")
async def retrieve_dataset(dataset_id: str, request: Request) -> Response:
    denied = _denied(request)
    if denied is not None:
        return denied
    from protege.distill.datasets.builder import get_dataset

    dv = await asyncio.to_thread(get_dataset, _store(request), dataset_id)
    if dv is None:
        return error(404, f"No dataset found with id '{dataset_id}'.", param="dataset_id", code="not_found")
    return _json(dv.to_dict())


__all__ = ["router"]