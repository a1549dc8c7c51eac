"""Small helpers shared by Protege's own HTTP API (``/protege/v1/...``): OpenAI-style error JSON,
list envelopes, and the admin-key check. Glue like ``clikit``: any area's router may use it."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from protege import keys


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
    """The client's key, read by the app's one parser (:func:`protege.keys.client_key`)."""
    return keys.client_key(request.headers.raw)[0] or ""


def admin_denial(request: Request, what: str = "This endpoint") -> keys.Denial | None:
    """Why this request may not use an admin-only endpoint (None: it may). Whenever the server has
    any key (proxy or admin), an admin key is needed; with proxy keys only, the API is closed."""
    settings = getattr(request.app.state, "protege_settings", None)
    return keys.admin_denial(
        keys.client_key(request.headers.raw)[0],
        getattr(settings, "proxy_keys", None) or [],
        getattr(settings, "admin_keys", None) or [],
        what,
    )


def admin_key_problem(request: Request, what: str = "This endpoint") -> tuple[str, str] | None:
    """``(code, message)`` of :func:`admin_denial` (for routers that build their own error)."""
    denial = admin_denial(request, what)
    return None if denial is None else (denial.code, denial.message)


def denial_response(denial: keys.Denial) -> JSONResponse:
    return error_response(denial.status, denial.message, type_=denial.type, code=denial.code)


def admin_denied(request: Request, what: str = "This endpoint") -> JSONResponse | None:
    denial = admin_denial(request, what)
    return None if denial is None else denial_response(denial)
