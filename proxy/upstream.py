"""The upstream ("teacher"): one shared aiohttp session, URL mapping, and upstream credentials.

aiohttp rather than httpx: on the 2-core reference machine its pool kept ~7x httpx's throughput at 32
connections (measured when the proxy was designed; bench/bench_proxy.py measures the proxy as built). Azure is addressed by endpoint; with Entra ID
the token comes from azure-identity, fetched off the event loop and cached until shortly before expiry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from protege.settings import Settings
from protege.startup import split_upstream

from .paths import encode

ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_MARGIN_S = 300.0

# Never forwarded: hop-by-hop headers, what aiohttp sets itself, credentials (replaced), our own.
DROP_REQUEST_HEADERS = frozenset(
    {
        "host", "connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "content-length", "authorization", "api-key", "cookie", "x-protege-capture",
        "accept-encoding", "expect",
    }
)
DROP_RESPONSE_HEADERS = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer", b"trailers",
        b"transfer-encoding", b"upgrade", b"content-length", b"set-cookie", b"date", b"server",
    }
)


def make_credential() -> Any:
    """DefaultAzureCredential (imported lazily: only Entra deployments pay for azure-identity)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class EntraToken:
    """A Microsoft Entra ID bearer token for Azure OpenAI, refreshed before it expires."""

    def __init__(self, credential: Any = None) -> None:
        self._credential = credential
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        if self._token and self._expires_on - time.time() > REFRESH_MARGIN_S:
            return self._token
        async with self._lock:
            if self._token and self._expires_on - time.time() > REFRESH_MARGIN_S:
                return self._token
            loop = asyncio.get_running_loop()
            if self._credential is None:
                self._credential = await loop.run_in_executor(None, make_credential)
            tok = await loop.run_in_executor(None, self._credential.get_token, ENTRA_SCOPE)
            self._token, self._expires_on = tok.token, float(tok.expires_on)
            return self._token


class Upstream:
    def __init__(self, settings: Settings, credential: Any = None) -> None:
        self.settings = settings
        self.azure = bool(settings.azure_endpoint)
        # Credentials in the URL never reach aiohttp's URL (it would add Basic auth itself and then
        # 500 on a Bearer header) nor the captures' `upstream` column: see split_upstream.
        target = split_upstream(settings)
        self.root = target.url.rstrip("/")
        self.name = self.root
        secret = settings.azure_api_key if self.azure else settings.upstream_api_key
        self.server_key = secret.get_secret_value() if secret is not None else None
        self.basic = (
            aiohttp.BasicAuth(target.basic_user or "", target.basic_password or "").encode() if target.has_basic else None
        )
        self.entra = EntraToken(credential) if self.azure and settings.azure_auth == "entra" else None
        self.api_version = settings.azure_api_version
        self.session: aiohttp.ClientSession | None = None
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.upstream_timeout
        )
        self._openai_chat = URL(self.root + "/chat/completions", encoded=True)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.settings.upstream_timeout, connect=self.settings.connect_timeout),
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- URLs ---------------------------------------------------------------------------------
    def chat_url(self, shape: str, deployment: str | None, model: str | None, query: bytes) -> URL:
        """Where a chat completion goes. shape: "v1", "azure_v1" or "deployment"."""
        if not self.azure:
            return self._openai_chat
        if shape == "azure_v1":
            return URL(self.root + "/openai/v1/chat/completions", encoded=True)
        dep = quote(deployment if shape == "deployment" and deployment else (model or ""), safe="")
        qs = query.decode("latin-1") if shape == "deployment" and query else f"api-version={self.api_version}"
        return URL(f"{self.root}/openai/deployments/{dep}/chat/completions?{qs}", encoded=True)

    def passthrough_url(self, path: str, query: bytes) -> URL:
        """``/v1/<rest>`` and ``/openai/...`` on the upstream. ``path`` is the normalised, decoded
        path the proxy routed on; it is re-encoded so the upstream decodes exactly that."""
        path = encode(path)
        if self.azure:
            if path.startswith("/v1/"):
                target = self.root + "/openai" + path
            else:
                target = self.root + path
        else:
            rest = path[len("/openai/v1") :] if path.startswith("/openai/v1/") else path[len("/v1") :]
            target = self.root + rest
        if query:
            target += "?" + query.decode("latin-1")
        return URL(target, encoded=True)

    # -- credentials ----------------------------------------------------------------------------
    async def auth_headers(self, key: str | None, style: str | None, use_server: bool) -> dict[str, str]:
        """The client's own key passed through, or the server's credential."""
        if key and not use_server:
            if style == "api-key" and self.azure:
                return {"api-key": key}
            return {"Authorization": "Bearer " + key}
        if self.entra is not None:
            return {"Authorization": "Bearer " + await self.entra.get()}
        if self.basic is not None:
            return {"Authorization": self.basic}
        if self.server_key:
            if self.azure:
                return {"api-key": self.server_key}
            return {"Authorization": "Bearer " + self.server_key}
        return {}


def forward_headers(raw: list[tuple[bytes, bytes]], auth: dict[str, str]) -> dict[str, str]:
    """The client's headers minus hop-by-hop/credentials, plus the upstream credential."""
    out: dict[str, str] = {}
    for name, value in raw:
        n = name.decode("latin-1")
        if n in DROP_REQUEST_HEADERS or n.startswith("x-protege-"):
            continue
        out[n] = value.decode("latin-1")
    out.update(auth)
    return out


def response_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """Upstream response headers fit to send on (raw pairs, hop-by-hop removed)."""
    return [(k.lower(), v) for k, v in headers if k.lower() not in DROP_RESPONSE_HEADERS]
