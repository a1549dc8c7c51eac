"""Protege's own HTTP API for datasets (``/protege/v1/datasets``): build a dataset version, list
and show them.

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
from protege.distill.datasets.builder import DatasetError, DatasetOptions, build_dataset, get_dataset, list_datasets

# With admin keys configured these routes need one: they expose and curate captured traffic.
router = APIRouter(dependencies=[apikit.admin_only("Feedback and datasets")])




@router.post("/protege/v1/datasets")
async def create_dataset(request: Request, store: Any = Depends(apikit.store)) -> Response:
    """Build a dataset version synchronously (builds are seconds, not minutes, at 1M rows)."""
    body = await apikit.json_object(request, empty={})
    if not body.get("name"):
        raise error(400, "Missing required parameter: 'name'.", param="name", code="missing_required_parameter")
    try:
        opts = DatasetOptions.from_dict(body)
    except DatasetError as exc:
        raise error(400, str(exc), code="invalid_value") from None
    except TypeError as exc:
        raise error(400, f"Invalid dataset options: {exc}", code="invalid_value") from None
    try:
        dv = await asyncio.to_thread(build_dataset, store, opts)
    except DatasetError as exc:
        raise error(400, str(exc), code="empty_dataset") from None
    return apikit.json_response(dv.to_dict())


@router.get("/protege/v1/datasets")
async def list_datasets_route(request: Request, store: Any = Depends(apikit.store), limit: int = Depends(apikit.limit)) -> Response:
    items, has_more = await asyncio.to_thread(
        list_datasets, store, name=request.query_params.get("name"), after=request.query_params.get("after"), limit=limit
    )
    return apikit.list_response([d.to_dict() for d in items], has_more)


@router.get("/protege/v1/datasets/{dataset_id}")
async def retrieve_dataset(dataset_id: str, store: Any = Depends(apikit.store)) -> Response:
    dv = await asyncio.to_thread(get_dataset, store, dataset_id)
    if dv is None:
        raise error(404, f"No dataset found with id '{dataset_id}'.", param="dataset_id", code="not_found")
    return apikit.json_response(dv.to_dict())


__all__ = ["router"]
