"""Protege's own HTTP API for feedback on captured completions (``/protege/v1/...feedback``).

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

FEEDBACK_FIELDS = {"score", "label", "correction", "comment", "accepted", "metadata"}


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


def _check_feedback(body: dict[str, Any]) -> JSONResponse | None:
    unknown = set(body) - FEEDBACK_FIELDS
    if unknown:
        name = min(unknown)
        return error(400, f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
    if not any(body.get(k) is not None for k in FEEDBACK_FIELDS - {"metadata"}):
        return error(400, "Feedback needs at least one of score, label, correction, comment, accepted.", code="missing_required_parameter")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        return error(400, "Invalid 'score': expected a number.", param="score", code="invalid_type")
    for key in ("label", "correction", "comment"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return error(400, f"Invalid '{key}': expected a string.", param=key, code="invalid_type")
    if body.get("accepted") is not None and not isinstance(body["accepted"], bool):
        return error(400, "Invalid 'accepted': expected a boolean or null.", param="accepted", code="invalid_type")
    md = body.get("metadata")
    if md is not None and (not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values())):
        return error(400, "Invalid 'metadata': expected an object of string values.", param="metadata", code="invalid_type")
    return None


@router.post("/protege/v1/completions/{completion_id}/feedback")
async def create_feedback(completion_id: str, request: Request) -> Response:
    denied = _denied(request)
    if denied is not None:
        return denied
    from protege.store.feedback import add_feedback

    body = await _body(request)
    if isinstance(body, JSONResponse):
        return body
    bad = _check_feedback(body)
    if bad is not None:
        return bad
    store = _store(request)

    def add() -> Any:
        return add_feedback(
            store, completion_id,
            score=body.get("score"), label=body.get("label"), correction=body.get("correction"),
            comment=body.get("comment"), accepted=body.get("accepted"), metadata=body.get("metadata"),
        )

    # Read-your-writes: feedback sent right after the answer waits (boundedly) for its capture.
    writer = getattr(request.app.state, "protege_writer", None)
    fb = await asyncio.to_thread(writer.read_your_writes, add) if writer is not None else await asyncio.to_thread(add)
    if fb is None:
        return error(404, f"No completion found with id '{completion_id}'.", param="completion_id", code="not_found")
    return _json(fb)


def _feedback_filters(request: Request) -> dict[str, Any] | JSONResponse:
    q = request.query_params
    out: dict[str, Any] = {}
    for key in ("min_score", "max_score"):
        if q.get(key) is not None:
            try:
                out[key] = float(q[key])
            except ValueError:
                return error(400, f"Invalid '{key}': expected a number.", param=key, code="invalid_type")
    if q.get("accepted") is not None:
        if q["accepted"] not in ("true", "false"):
            return error(400, "Invalid 'accepted': expected true or false.", param="accepted", code="invalid_type")
        out["accepted"] = q["accepted"] == "true"
    if q.get("has_correction") is not None:
        if q["has_correction"] not in ("true", "false"):
            return error(400, "Invalid 'has_correction': expected true or false.", param="has_correction", code="invalid_type")
        out["has_correction"] = q["has_correction"] == "true"
    if q.get("label") is not None:
        out["label"] = q["label"]
    order = q.get("order", "asc")
    if order not in ("asc", "desc"):
        return error(400, "Invalid 'order': expected asc or desc.", param="order", code="invalid_value")
    out["order"] = order
    if q.get("after"):
        out["after"] = q["after"]
    return out


@router.get("/protege/v1/completions/{completion_id}/feedback")
async def list_completion_feedback(completion_id: str, request: Request) -> Response:
    denied = _denied(request)
    if denied is not None:
        return denied
    from protege.store.feedback import completion_seq, list_feedback

    store = _store(request)
    if await asyncio.to_thread(completion_seq, store, completion_id) is None:
        return error(404, f"No completion found with id '{completion_id}'.", param="completion_id", code="not_found")
    limit = _limit(request)
    if isinstance(limit, JSONResponse):
        return limit
    filters = _feedback_filters(request)
    if isinstance(filters, JSONResponse):
        return filters
    page = await asyncio.to_thread(list_feedback, store, completion_id=completion_id, limit=limit, **filters)
    return _envelope(page.data, page.has_more)


@router.get("/protege/v1/feedback")
async def list_all_feedback(request: Request) -> Response:
    denied = _denied(request)
    if denied is not None:
        return denied
    from protege.store.feedback import list_feedback

    limit = _limit(request)
    if isinstance(limit, JSONResponse):
        return limit
    filters = _feedback_filters(request)
    if isinstance(filters, JSONResponse):
        return filters
    if request.query_params.get("completion_id"):
        filters["completion_id"] = request.query_params["completion_id"]
    page = await asyncio.to_thread(list_feedback, _store(request), limit=limit, **filters)
    return _envelope(page.data, page.has_more)


@router.get("/protege/v1/feedback/{feedback_id}")
async def retrieve_feedback(feedback_id: str, request: Request) -> Response:
    denied = _denied(request)
    if denied is not None:
        return denied
    from protege.store.feedback import get_feedback

    fb = await asyncio.to_thread(get_feedback, _store(request), feedback_id)
    if fb is None:
        return error(404, f"No feedback found with id '{feedback_id}'.", param="feedback_id", code="not_found")
    return _json(fb)


__all__ = ["router"]
