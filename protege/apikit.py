"""Small helpers shared by Protege's own HTTP API (``/protege/v1/...``): OpenAI-style error JSON,
list envelopes, and the admin-key check. Glue like ``clikit``: any area's router may use it."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse


def error_response(
    status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


def list_envelope(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    """OpenAI's cursor-page shape (the SDK pages with ``after=<last id>`` while ``has_more``)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def presented_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("api-key", "").strip()


def admin_key_problem(request: Request, what: str = "This endpoint") -> tuple[str, str] | None:
    """``(code, message)`` when the server has admin keys and the request did not present one."""
    settings = getattr(request.app.state, "protege_settings", None)
    keys = list(getattr(settings, "admin_keys", None) or [])
    if not keys:
        return None
    key = presented_key(request)
    if not key:
        return "missing_api_key", f"You didn't provide an API key. {what} needs an admin key (Authorization: Bearer ...)."
    if not any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
        return "invalid_api_key", f"Incorrect API key provided: {what.lower()} needs an admin key."
    return None


def admin_denied(request: Request, what: str = "This endpoint") -> JSONResponse | None:
    problem = admin_key_problem(request, what)
    return None if problem is None else error_response(401, problem[1], code=problem[0])
