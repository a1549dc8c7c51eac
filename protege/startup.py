"""Checks made before the server starts: configurations that would expose captures or keys.

Each problem is one line for the operator, naming the setting (or flag) that changes it, and never
quoting a credential.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from yarl import URL

from protege.settings import Settings

ALLOW_OPEN_HINT = "pass --allow-open (or set allow_open = true / PROTEGE_ALLOW_OPEN=true)"


class StartupError(Exception):
    """A configuration Protege refuses to serve with; ``str()`` is the one-line explanation."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost" reach only this machine; anything else may not."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def check_exposure(settings: Settings) -> None:
    """Refuse a non-loopback bind with no key at all: anyone who reaches the port could read every
    capture and spend the server's upstream key."""
    if is_loopback(settings.host) or settings.proxy_keys or settings.admin_keys or settings.allow_open:
        return
    raise StartupError(
        f"refusing to listen on {settings.host} with no keys: anyone who can reach it could read the "
        "captures and spend the upstream key; set proxy_keys and admin_keys (PROTEGE_PROXY_KEYS, "
        f"PROTEGE_ADMIN_KEYS), bind 127.0.0.1, or {ALLOW_OPEN_HINT}"
    )


@dataclass(frozen=True)
class UpstreamURL:
    """The upstream base URL without userinfo, and the HTTP Basic credentials it carried."""

    url: str
    basic_user: str | None = None
    basic_password: str | None = None

    @property
    def has_basic(self) -> bool:
        return self.basic_user is not None


def split_upstream(settings: Settings) -> UpstreamURL:
    """``http://user:secret@host/v1`` -> ``http://host/v1`` plus Basic credentials.

    Credentials in the URL are the server's own upstream credential, sent as HTTP Basic auth
    (e.g. an nginx in front of Ollama or vLLM) wherever the server's key would be sent. They share
    the Authorization header with a Bearer key, so a URL with credentials *and* an upstream API key
    is refused (one of the two would be dropped silently), as are credentials in an Azure endpoint
    (Azure takes an api-key or an Entra token). The URL is kept and recorded without them.
    """
    if settings.azure_endpoint:
        url = URL(str(settings.azure_endpoint))
        if url.user is not None or url.password is not None:
            raise StartupError(
                f"the Azure endpoint {url.with_user(None)} contains credentials (user:password@); remove them and "
                "use AZURE_OPENAI_API_KEY or --azure-auth entra"
            )
        return UpstreamURL(str(settings.azure_endpoint))
    url = URL(settings.upstream)
    if url.user is None and url.password is None:
        return UpstreamURL(settings.upstream)
    bare = str(url.with_user(None))
    if settings.upstream_api_key is not None:
        raise StartupError(
            f"the upstream URL {bare} contains credentials (user:password@) and an upstream API key is set "
            "(OPENAI_API_KEY / PROTEGE_UPSTREAM_API_KEY): both would go in the Authorization header; "
            "keep one of them"
        )
    return UpstreamURL(bare, url.user or "", url.password or "")
