"""Protege's own HTTP API for feedback on captured completions (``/protege/v1/...feedback``): add
feedback to a capture, list and show it.

Mounted by ``protege.app``; the store, the list envelope and cursor and the OpenAI-style error JSON
are the kit's (:mod:`protege.apikit`), so the ``openai`` SDK's error handling works here too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from protege import apikit
from protege.apikit import error
from protege.store.feedback import add_feedback, completion_seq, get_feedback, list_feedback

# With admin keys configured these routes need one: they expose and curate captured traffic.
router = APIRouter(dependencies=[apikit.admin_only("Feedback and datasets")])

FEEDBACK_FIELDS = {"score", "label", "correction", "comment", "accepted", "metadata"}




def _check_feedback(body: dict[str, Any]) -> None:
    unknown = set(body) - FEEDBACK_FIELDS
    if unknown:
        name = min(unknown)
        raise error(400, f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
    if not any(body.get(k) is not None for k in FEEDBACK_FIELDS - {"metadata"}):
        raise error(400, "Feedback needs at least one of score, label, correction, comment, accepted.", code="missing_required_parameter")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise error(400, "Invalid 'score': expected a number.", param="score", code="invalid_type")
    for key in ("label", "correction", "comment"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise error(400, f"Invalid '{key}': expected a string.", param=key, code="invalid_type")
    if body.get("accepted") is not None and not isinstance(body["accepted"], bool):
        raise error(400, "Invalid 'accepted': expected a boolean or null.", param="accepted", code="invalid_type")
    md = body.get("metadata")
    if md is not None and (not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values())):
        raise error(400, "Invalid 'metadata': expected an object of string values.", param="metadata", code="invalid_type")


@router.post("/protege/v1/completions/{completion_id}/feedback")
async def create_feedback(completion_id: str, request: Request, store: Any = Depends(apikit.store)) -> Response:
    body = await apikit.json_object(request, empty={})
    _check_feedback(body)

    def add() -> Any:
        return add_feedback(
            store, completion_id,
            score=body.get("score"), label=body.get("label"), correction=body.get("correction"),
            comment=body.get("comment"), accepted=body.get("accepted"), metadata=body.get("metadata"),
        )

    # Read-your-writes: feedback sent right after the answer waits (boundedly) for its capture.
    writer = getattr(request.app.state, "protege_writer", None)
    fb = await asyncio.to_thread(writer.read_your_writes, add, completion_id) if writer is not None else await asyncio.to_thread(add)
    if fb is None:
        raise error(404, f"No completion found with id '{completion_id}'.", param="completion_id", code="not_found")
    return apikit.json_response(fb)


def _feedback_filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    out: dict[str, Any] = {}
    for key in ("min_score", "max_score"):
        if q.get(key) is not None:
            try:
                out[key] = float(q[key])
            except ValueError:
                raise error(400, f"Invalid '{key}': expected a number.", param=key, code="invalid_type")
    if q.get("accepted") is not None:
        if q["accepted"] not in ("true", "false"):
            raise error(400, "Invalid 'accepted': expected true or false.", param="accepted", code="invalid_type")
        out["accepted"] = q["accepted"] == "true"
    if q.get("has_correction") is not None:
        if q["has_correction"] not in ("true", "false"):
            raise error(400, "Invalid 'has_correction': expected true or false.", param="has_correction", code="invalid_type")
        out["has_correction"] = q["has_correction"] == "true"
    if q.get("label") is not None:
        out["label"] = q["label"]
    order = q.get("order", "asc")
    if order not in ("asc", "desc"):
        raise error(400, "Invalid 'order': expected asc or desc.", param="order", code="invalid_value")
    out["order"] = order
    if q.get("after"):
        out["after"] = q["after"]
    return out


@router.get("/protege/v1/completions/{completion_id}/feedback")
async def list_completion_feedback(completion_id: str, request: Request, store: Any = Depends(apikit.store)) -> Response:
    if await asyncio.to_thread(completion_seq, store, completion_id) is None:
        raise error(404, f"No completion found with id '{completion_id}'.", param="completion_id", code="not_found")
    limit = apikit.parse_limit(request.query_params.get("limit"))
    filters = _feedback_filters(request)
    page = await asyncio.to_thread(list_feedback, store, completion_id=completion_id, limit=limit, **filters)
    return apikit.list_response(page.data, page.has_more)


@router.get("/protege/v1/feedback")
async def list_all_feedback(request: Request, store: Any = Depends(apikit.store), limit: int = Depends(apikit.limit)) -> Response:
    filters = _feedback_filters(request)
    if request.query_params.get("completion_id"):
        filters["completion_id"] = request.query_params["completion_id"]
    page = await asyncio.to_thread(list_feedback, store, limit=limit, **filters)
    return apikit.list_response(page.data, page.has_more)


@router.get("/protege/v1/feedback/{feedback_id}")
async def retrieve_feedback(feedback_id: str, store: Any = Depends(apikit.store)) -> Response:
    fb = await asyncio.to_thread(get_feedback, store, feedback_id)
    if fb is None:
        raise error(404, f"No feedback found with id '{feedback_id}'.", param="feedback_id", code="not_found")
    return apikit.json_response(fb)


__all__ = ["router"]
