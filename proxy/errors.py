"""OpenAI-style error bodies, built as bytes because the raw-ASGI hot path sends bytes."""

from __future__ import annotations

from typing import Any

import orjson


def error_obj(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_bytes(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps(error_obj(message, type, param, code))


def too_large(limit: int) -> bytes:
    """The 413 body for a request body over ``limit`` bytes."""
    return error_bytes(f"Request body too large: the limit is {limit} bytes.", code="request_too_large")


async def send_json(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """One complete JSON response on a raw ASGI ``send``."""
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if headers:
        hdrs.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
    await send_json(send, status, error_bytes(message, type, param, code))


NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
    "auth (i.e. Authorization: Bearer YOUR_KEY) or in an api-key header."
)
BAD_KEY = "Incorrect API key provided. Use one of the keys configured for this Protege proxy."
NOT_ADMIN = "This key cannot read or change stored completions: an admin key is required."
