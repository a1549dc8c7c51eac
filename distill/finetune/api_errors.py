"""How the fine-tuning and students routers answer a failure: one mapping to OpenAI-style error JSON.

Their routes use :class:`FineTuneRoute`, so a handler just raises: a :class:`FineTuneError` keeps
its status (the error type follows it), an unreachable provider is a 502, anything else a logged
500. The kit's own ``ApiError`` and FastAPI's request errors (validation, HTTP) pass through as the
app's handlers answer them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import openai
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from protege.apikit import ApiError

from protege.distill.finetune.interface import FineTuneError

log = logging.getLogger("protege.distill.finetune.api")

_ERROR_TYPES = {401: "authentication_error", 403: "permission_error"}


def api_error(exc: Exception) -> ApiError:
    """Any failure of a fine-tuning or students route as the kit's error."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, FineTuneError):
        kind = _ERROR_TYPES.get(exc.status, "invalid_request_error" if exc.status < 500 else "api_error")
        return ApiError(exc.status, exc.message, type=kind, param=exc.param, code=exc.code)
    if isinstance(exc, openai.APIConnectionError):
        return ApiError(502, f"the fine-tuning provider could not be reached: {exc}", type="api_error", code="upstream_unreachable")
    log.exception("fine-tuning API error")
    return ApiError(500, f"internal error: {exc.__class__.__name__}", type="api_error")


class FineTuneRoute(APIRoute):
    """A route whose handler's failures are answered as :func:`api_error` says."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except (ApiError, HTTPException, RequestValidationError):
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes OpenAI-style error JSON
                raise api_error(exc) from None

        return route


__all__ = ["FineTuneRoute", "api_error"]
