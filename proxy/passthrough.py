"""Every other ``/v1/*`` call (models, embeddings, responses, files, ...) forwarded unchanged.

Method, query, body, status and headers (minus hop-by-hop) pass through; the response body is
streamed as it arrives and not decompressed, so what the client receives is what upstream sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from . import errors
from .auth import client_key
from .body import Refused, admitted_body
from .metrics import Metrics
from .upstream import Upstream, forward_headers, response_headers


class Passthrough:
    def __init__(self, upstream: Upstream, metrics: Metrics, allowed_keys: list[str], max_body: int) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.allowed_keys = allowed_keys
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        key, style = client_key(scope["headers"])
        accept_encoding = None
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accept_encoding = value.decode("latin-1")
        try:
            use_server, body = await admitted_body(receive, key, self.allowed_keys, self.max_body)
        except Refused as refused:
            return await self._fail(send, refused.status, refused.body)
        if body is None:
            return
        headers = forward_headers(scope["headers"], await self.upstream.auth_headers(key, style, use_server))
        if accept_encoding:
            headers["accept-encoding"] = accept_encoding
        url = self.upstream.passthrough_url(scope["path"], scope.get("query_string", b""))
        session = self.upstream.session
        assert session is not None
        try:
            resp = await session.request(
                scope["method"], url, data=body or None, headers=headers, auto_decompress=False,
                timeout=self.upstream.stream_timeout, allow_redirects=False,
            )
        except asyncio.TimeoutError:
            return await self._fail(send, 504, errors.error_bytes("The upstream did not answer in time.", "upstream_error", code="upstream_timeout"))
        except aiohttp.ClientError as exc:
            return await self._fail(send, 502, errors.error_bytes(
                f"The upstream could not be reached ({type(exc).__name__}).", "upstream_error", code="upstream_unreachable"))
        hdrs = response_headers(resp.raw_headers)
        length = resp.headers.get("content-length")
        if length is not None:
            hdrs.append((b"content-length", length.encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": hdrs})
        try:
            async for data in resp.content.iter_any():
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except (asyncio.TimeoutError, aiohttp.ClientError):
            resp.close()
        else:
            resp.release()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.metrics.request("passthrough", resp.status)

    async def _fail(self, send: Any, status: int, body: bytes) -> None:
        self.metrics.request("passthrough", status)
        await errors.send_json(send, status, body)
