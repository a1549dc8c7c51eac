"""OpenAI's Stored Completions API served from the store (and its Azure path variants).

Endpoints are plain ``def`` so FastAPI runs the DuckDB queries in its threadpool, off the event loop.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from protege import apikit
from protege.apikit import ApiError, list_envelope
from protege.keys import admin_denial
from protege.store import CaptureWriter, Store, delete_completion, get_stored, input_messages, list_stored, update_metadata

from .auth import client_key
from .validation import FilterError, metadata_error, metadata_filter

PREFIXES = ("/v1/chat/completions", "/openai/v1/chat/completions", "/openai/chat/completions")
MAX_LIMIT = apikit.MAX_LIMIT


def _json(obj: Any, status: int = 200) -> Response:
    return apikit.json_response(obj, status)


def _key(request: Request) -> str | None:
    return client_key(request.headers.raw)[0]


def _limit(value: str | None) -> int:
    return apikit.parse_limit(value)


def _order(value: str | None) -> str:
    if value in (None, "asc", "desc"):
        return value or "asc"
    raise ApiError(400, f"Invalid value for 'order': expected one of asc or desc, but got {value!r} instead.", param="order", code="invalid_value")


def _not_found(completion_id: str) -> ApiError:
    return ApiError(404, f"Chat completion with id '{completion_id}' not found.", code="not_found")


def _envelope(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return list_envelope(data, has_more)


def stored_router(store: Store, proxy_keys: list[str], admin_keys: list[str], writer: CaptureWriter | None = None) -> APIRouter:
    router = APIRouter()

    def visible(completion_id: str, fetch: Callable[[], Any]) -> Any:
        """Read-your-writes: a completion whose capture is still on its way to the database is
        waited for (boundedly, in this threadpool thread), so a client that has its answer finds it."""
        return writer.read_your_writes(fetch, completion_id) if writer is not None else fetch()

    def check(request: Request) -> None:
        denial = admin_denial(_key(request), proxy_keys, admin_keys, "The Stored Completions API")
        if denial is not None:
            raise ApiError(denial.status, denial.message, code=denial.code, type=denial.type)

    def endpoint(fn: Callable[..., Any]) -> Callable[..., Response]:
        """The admin check first (the app's ApiError handler answers what either raises)."""

        @functools.wraps(fn)
        def wrapped(request: Request, *args: Any, **kwargs: Any) -> Response:
            check(request)
            return fn(request, *args, **kwargs)

        return wrapped

    @endpoint
    def list_completions(request: Request) -> Response:
        q = request.query_params
        try:
            metadata = metadata_filter(q.multi_items())
        except FilterError as exc:
            raise ApiError(400, exc.message, param=exc.param, code=exc.code)
        after = q.get("after") or None
        if after is not None and get_stored(store, after) is None:
            # As OpenAI: an unknown cursor is a 404, never a silent restart at the first page
            # (an SDK auto-paginating past a deleted completion would loop forever).
            raise ApiError(404, f"No chat completion found with id '{after}'.", param="after", code="not_found")
        page = list_stored(
            store, model=q.get("model") or None, metadata=metadata or None, after=after,
            limit=_limit(q.get("limit")), order=_order(q.get("order")),
        )
        return _json(_envelope(page.data, page.has_more))

    @endpoint
    def retrieve(request: Request, completion_id: str) -> Response:
        obj = visible(completion_id, lambda: get_stored(store, completion_id))
        if obj is None:
            raise _not_found(completion_id)
        return _json(obj)

    @endpoint
    def update(request: Request, completion_id: str, body: bytes) -> Response:
        try:
            payload = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise ApiError(400, "We could not parse the JSON body of your request.")
        if not isinstance(payload, dict) or "metadata" not in payload:
            raise ApiError(400, "Missing required parameter: 'metadata'.", param="metadata", code="missing_required_parameter")
        problem = metadata_error(payload["metadata"])
        if problem is not None:
            raise ApiError(400, problem[0], param="metadata", code=problem[1])
        if visible(completion_id, lambda: get_stored(store, completion_id)) is None:
            raise _not_found(completion_id)
        obj = update_metadata(store, completion_id, payload["metadata"])
        if obj is None:
            raise _not_found(completion_id)
        return _json(obj)

    @endpoint
    def delete(request: Request, completion_id: str) -> Response:
        if get_stored(store, completion_id) is None or not delete_completion(store, completion_id):
            raise _not_found(completion_id)
        return _json({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})

    @endpoint
    def messages(request: Request, completion_id: str) -> Response:
        q = request.query_params
        limit, order, after = _limit(q.get("limit")), _order(q.get("order")), q.get("after")
        msgs = visible(completion_id, lambda: input_messages(store, completion_id))
        if msgs is None:
            raise _not_found(completion_id)
        if order == "desc":
            msgs = msgs[::-1]
        if after:
            ids = [m["id"] for m in msgs]
            if after not in ids:  # as OpenAI: an unknown cursor is a 404, not an empty page
                raise ApiError(404, f"No message found with id '{after}'.", param="after", code="not_found")
            msgs = msgs[ids.index(after) + 1 :]
        return _json(_envelope(msgs[:limit], len(msgs) > limit))

    async def _update(request: Request, completion_id: str) -> Response:
        # Read the body on the loop, query in the threadpool. (No extra parameters: FastAPI would
        # put them in the OpenAPI schema, and a Callable there made /openapi.json a 500.)
        from starlette.concurrency import run_in_threadpool

        body = await request.body()
        return await run_in_threadpool(update, request, completion_id, body)

    for prefix in PREFIXES:
        router.add_api_route(prefix, list_completions, methods=["GET"], include_in_schema=prefix == PREFIXES[0])
        router.add_api_route(prefix + "/{completion_id}", retrieve, methods=["GET"], include_in_schema=prefix == PREFIXES[0])

        router.add_api_route(prefix + "/{completion_id}", _update, methods=["POST"], include_in_schema=prefix == PREFIXES[0])
        router.add_api_route(prefix + "/{completion_id}", delete, methods=["DELETE"], include_in_schema=prefix == PREFIXES[0])
        router.add_api_route(prefix + "/{completion_id}/messages", messages, methods=["GET"], include_in_schema=prefix == PREFIXES[0])
    return router
