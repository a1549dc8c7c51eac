"""The HTTP kit every router of Protege uses (Protege's own ``/protege/v1/...`` API and the Stored
Completions API): one error type with one handler, FastAPI dependencies for the store, the admin
check and the page size, and OpenAI's list envelope. Glue like ``clikit``: any area's router may use
it, and it imports no room above the store.

Why one kit: each router used to carry its own preamble, and the copies disagreed (page sizes
1-100, 1-1000 or unbounded; two ``ApiError`` classes beside returned ``JSONResponse``s). A handler
raises :class:`ApiError` anywhere (in a dependency, in a worker thread) and :func:`install`'s one
handler answers it as OpenAI's error JSON.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from protege import keys

MAX_LIMIT = 100  # OpenAI's bound for list endpoints (``limit`` 1-100)
DEFAULT_LIMIT = 20


class ApiError(Exception):
    """An OpenAI-style error answer: raise it from a route or a dependency; :func:`install`'s
    handler turns it into ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def install(app: Any) -> None:
    """The app's error handlers: :class:`ApiError`, and Starlette's HTTP errors (unknown paths and
    methods) in the same OpenAI shape."""

    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        return ApiError(exc.status_code, message).response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def error_response(
    status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> JSONResponse:
    """The error JSON as a response, for code that answers rather than raises."""
    return ApiError(status, message, type=type_, param=param, code=code).response()


def json_response(obj: Any, status: int = 200) -> Response:
    """JSON encoded with orjson (fast, and it encodes what the store returns as is)."""
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def list_response(data: list[dict[str, Any]], has_more: bool = False) -> Response:
    """A list route's whole answer: :func:`list_envelope` as JSON."""
    return json_response(list_envelope(data, has_more))


def error(status: int, message: str, param: str | None = None, code: str | None = None,
          type_: str = "invalid_request_error") -> ApiError:
    """An :class:`ApiError` with OpenAI's field order (param, then code), for ``raise error(...)``."""
    return ApiError(status, message, type=type_, param=param, code=code)


def list_envelope(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    """OpenAI's cursor-page shape (the SDK pages with ``after=<last id>`` while ``has_more``)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


# -- dependencies -----------------------------------------------------------------------------


async def store(request: Request) -> Any:
    """``Depends(apikit.store)``: the app's store (``app.state.protege_store``, set by protege.app)."""
    found = getattr(request.app.state, "protege_store", None)
    if found is None:
        raise ApiError(503, "This server has no store configured.", type="api_error", code="no_store")
    return found


def parse_limit(raw: str | None, default: int = DEFAULT_LIMIT) -> int:
    """A page size from the query string: an integer from 1 to :data:`MAX_LIMIT` (else a 400)."""
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid 'limit': expected an integer, but got {raw!r} instead.", param="limit", code="invalid_type") from None
    if not 1 <= n <= MAX_LIMIT:
        raise ApiError(
            400, f"Invalid 'limit': expected a value between 1 and {MAX_LIMIT}, but got {n} instead.",
            param="limit", code="integer_out_of_range",
        )
    return n


async def limit(request: Request) -> int:
    """``Depends(apikit.limit)``: the request's ``limit`` (default 20, 1-100)."""
    return parse_limit(request.query_params.get("limit"))


def admin_only(what: str = "This endpoint") -> Any:
    """``dependencies=[apikit.admin_only("Eval runs")]``: whenever the server has any key (proxy or
    admin), an admin key is needed; with proxy keys only, the API is closed (:func:`protege.keys.admin_denial`)."""

    async def check(request: Request) -> None:
        denial = admin_denial(request, what)
        if denial is not None:
            raise ApiError(denial.status, denial.message, type=denial.type, code=denial.code)

    return Depends(check)


async def json_object(request: Request, *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request's JSON object body (``empty``: what an empty body means; None: an error)."""
    raw = await request.body()
    if not raw.strip() and empty is not None:
        return dict(empty)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


# -- keys -------------------------------------------------------------------------------------


def presented_key(request: Request) -> str:
    """The client's key, read by the app's one parser (:func:`protege.keys.client_key`)."""
    return keys.client_key(request.headers.raw)[0] or ""


def admin_denial(request: Request, what: str = "This endpoint") -> keys.Denial | None:
    """Why this request may not use an admin-only endpoint (None: it may), from the app's settings."""
    settings = getattr(request.app.state, "protege_settings", None)
    return keys.admin_denial(
        keys.client_key(request.headers.raw)[0],
        getattr(settings, "proxy_keys", None) or [],
        getattr(settings, "admin_keys", None) or [],
        what,
    )


def admin_key_problem(request: Request, what: str = "This endpoint") -> tuple[str, str] | None:
    """``(code, message)`` of :func:`admin_denial` (the console's session check uses it)."""
    denial = admin_denial(request, what)
    return None if denial is None else (denial.code, denial.message)

