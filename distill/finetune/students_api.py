"""``/protege/v1/students``: list students, register endpoint students, promote a version."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from protege import apikit

from protege.distill.finetune import students_admin
from protege.distill.finetune.api_errors import FineTuneRoute
from protege.distill.finetune.interface import FineTuneError

router = APIRouter(prefix="/protege/v1/students", tags=["students"], dependencies=[apikit.admin_only("Students")],
                   route_class=FineTuneRoute)


def _refresh(request: Request) -> None:
    registry = getattr(request.app.state, "protege_students", None)
    if registry is not None:
        registry.refresh()


@router.get("")
async def list_students(store: Any = Depends(apikit.store)) -> Any:
    return apikit.list_envelope(await asyncio.to_thread(students_admin.list_all, store))


@router.post("")
async def add_endpoint(request: Request, store: Any = Depends(apikit.store)) -> Any:
    """Register an endpoint student: {"name", "base_url", "model", "api_key_env"?, "timeout"?}."""
    body = await apikit.json_object(request)
    timeout = body.get("timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise FineTuneError("Invalid 'timeout': expected a positive number of seconds", param="timeout")
    for key in ("name", "base_url", "model"):
        if not isinstance(body.get(key), str):
            raise FineTuneError(f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter")
    if body.get("api_key") is not None:
        raise FineTuneError("Keys are never stored: give 'api_key_env', the NAME of the environment variable holding it.", param="api_key")
    out = await asyncio.to_thread(
        students_admin.add_endpoint, store, name=body["name"], base_url=body["base_url"], model=body["model"],
        api_key_env=body.get("api_key_env"), timeout=float(timeout),
    )
    await asyncio.to_thread(_refresh, request)
    return out


@router.delete("/{name}")
async def remove_endpoint(name: str, request: Request, store: Any = Depends(apikit.store)) -> Any:
    await asyncio.to_thread(students_admin.remove_endpoint, store, name)
    await asyncio.to_thread(_refresh, request)
    return {"object": "protege.student.deleted", "name": name, "deleted": True}


@router.post("/promote")
async def promote(request: Request, store: Any = Depends(apikit.store)) -> Any:
    """{"model": "protege/<name>@v<N>", "force": false, "reason"?}: the bare name serves that version."""
    body = await apikit.json_object(request)
    if not isinstance(body.get("model"), str):
        raise FineTuneError("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    out = await asyncio.to_thread(students_admin.promote, store, body["model"], force=body.get("force") is True, reason=body.get("reason"))
    await asyncio.to_thread(_refresh, request)
    return out
