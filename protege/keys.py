"""Who is calling and what they may do: the one parser for a client's key, and the admin check.

Every part of the app (the raw-ASGI hot path, the Stored Completions API, Protege's own
``/protege/v1`` API) reads the key with :func:`client_key`, so no two parts can disagree about
which header counts. OpenAI clients send ``Authorization: Bearer <key>``; ``AzureOpenAI(api_key=)``
sends ``api-key: <key>`` (v1.109 sends both, with the same key). When both are sent, ``api-key``
wins: only Azure-style clients send it, and they mean it as their key.

Access model: with no key configured everything is open (and ``protege serve`` refuses to bind a
non-loopback address that way). With any key configured (proxy or admin), Protege's own API and the
Stored Completions API need an admin key; with proxy keys but no admin keys they are closed, and the
error says which setting opens them. Nothing here logs, and raw keys are never stored.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Iterable

OPEN_HINT = (
    "set admin_keys in protege.toml or the PROTEGE_ADMIN_KEYS environment variable "
    "(a JSON list, e.g. PROTEGE_ADMIN_KEYS='[\"ak-...\"]'), restart, and send an admin key as "
    "Authorization: Bearer <key>"
)


def client_key(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(key, style) where style is "bearer" or "api-key"; (None, None) when no key was sent.
    ``headers`` are raw ASGI pairs (lower-case names), e.g. ``scope["headers"]`` or ``request.headers.raw``."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            v = value.decode("latin-1")
            if v[:7].lower() == "bearer " and v[7:].strip():
                bearer = v[7:].strip()
        elif name == b"api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
    if api_key:
        return api_key, "api-key"
    if bearer:
        return bearer, "bearer"
    return None, None


def key_hash(key: str | None) -> str | None:
    """A stable, non-reversible client identifier (sha256, first 16 hex digits)."""
    if not key:
        return None
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def key_in(key: str | None, keys: Iterable[str]) -> bool:
    """Constant-time membership, so response timing does not reveal key prefixes."""
    if not key:
        return False
    found = False
    for k in keys:
        found |= hmac.compare_digest(key.encode(), k.encode())
    return found


@dataclass(frozen=True)
class Denial:
    """Why a request may not use an admin-only endpoint, as OpenAI-style error fields. The type
    follows the status as the openai SDK names its errors: 401 ``authentication_error``
    (``AuthenticationError``), 403 ``permission_error`` (``PermissionDeniedError``)."""

    status: int
    type: str
    code: str
    message: str


def admin_denial(key: str | None, proxy_keys: Iterable[str], admin_keys: Iterable[str], what: str = "This endpoint") -> Denial | None:
    """None when ``key`` may use an admin-only endpoint, else the 401/403 to answer."""
    proxy_keys, admin_keys = list(proxy_keys), list(admin_keys)
    if not proxy_keys and not admin_keys:
        return None  # an open server (loopback unless the operator allowed otherwise)
    if admin_keys and key_in(key, admin_keys):
        return None
    if not admin_keys:
        closed = (
            f"{what} is closed: this Protege server has proxy keys but no admin keys. To open it, {OPEN_HINT}."
        )
        if key_in(key, proxy_keys):
            return Denial(403, "permission_error", "admin_api_closed", closed)
        if not key:
            return Denial(401, "authentication_error", "missing_api_key", "You didn't provide an API key. " + closed)
        return Denial(401, "authentication_error", "invalid_api_key", "Incorrect API key provided. " + closed)
    if not key:
        return Denial(
            401, "authentication_error", "missing_api_key",
            f"You didn't provide an API key. {what} needs an admin key (Authorization: Bearer <key> or an api-key header).",
        )
    if key_in(key, proxy_keys):
        return Denial(
            403, "permission_error", "insufficient_permissions",
            f"{what} needs an admin key: a proxy key can only make model calls.",
        )
    return Denial(401, "authentication_error", "invalid_api_key", f"Incorrect API key provided: {what.lower()} needs an admin key.")
