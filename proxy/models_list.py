"""``GET /v1/models`` (and ``/v1/models/<id>`` for students): the upstream's models and the students.

The list is OpenAI's (``{"object": "list", "data": [...]}``): the upstream's own list when it
answers (with the client's or the server's credential, as every forwarded call), merged with the
students the local-models hook knows; when the upstream cannot answer, the students alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from . import errors
from .auth import admit, client_key
from .hooks import LocalModels
from .metrics import Metrics
from .upstream import Upstream, forward_headers

MODELS_PATHS = ("/v1/models", "/openai/v1/models")
UPSTREAM_TIMEOUT = 5.0


class ModelsList:
    def __init__(self, upstream: Upstream, local_models: LocalModels, metrics: Metrics, allowed_keys: list[str]) -> None:
        self.upstream = upstream
        self.local_models = local_models
        self.metrics = metrics
        self.allowed_keys = allowed_keys

    def serves(self, method: str, path: str) -> bool:
        if method != "GET" or not hasattr(self.local_models, "models"):
            return False
        if path in MODELS_PATHS:
            return True
        for prefix in MODELS_PATHS:
            if path.startswith(prefix + "/"):
                claims = getattr(self.local_models, "claims", None)
                return bool(claims and claims(path[len(prefix) + 1:]))
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        key, style = client_key(scope["headers"])
        use_server, denied = admit(key, self.allowed_keys)
        if denied is not None:
            return await self._send(send, 401, denied)
        path = scope["path"]
        students: list[dict[str, Any]] = self.local_models.models()  # type: ignore[attr-defined]
        for prefix in MODELS_PATHS:
            if path.startswith(prefix + "/"):
                wanted = path[len(prefix) + 1:]
                found = next((m for m in students if m["id"] == wanted), None)
                if found is None:
                    return await self._send(send, 404, errors.error_bytes(
                        f"The model `{wanted}` does not exist or you do not have access to it.", code="model_not_found"))
                return await self._send(send, 200, orjson.dumps(found))
        data: list[dict[str, Any]] = []
        session = self.upstream.session
        if session is not None:
            headers = forward_headers(scope["headers"], await self.upstream.auth_headers(key, style, use_server))
            headers["accept-encoding"] = "identity"
            url = self.upstream.passthrough_url(path, scope.get("query_string", b""))
            try:
                async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT)) as resp:
                    if resp.status == 200:
                        listed = orjson.loads(await resp.read())
                        if isinstance(listed, dict) and isinstance(listed.get("data"), list):
                            data = [m for m in listed["data"] if isinstance(m, dict)]
            except (asyncio.TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, ValueError):
                data = []
        ids = {m.get("id") for m in data}
        data += [m for m in students if m["id"] not in ids]
        await self._send(send, 200, orjson.dumps({"object": "list", "data": data}))

    async def _send(self, send: Any, status: int, body: bytes) -> None:
        self.metrics.request("passthrough", status)
        await errors.send_json(send, status, body)
