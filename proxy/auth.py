"""Who is calling: the client's key (Bearer or api-key), proxy keys, admin keys.

The raw key never leaves memory: captures record only :func:`key_hash`, and nothing here logs.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable


def client_key(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(key, style) where style is "bearer" or "api-key"; (None, None) when no key was sent."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            v = value.decode("latin-1")
            if v[:7].lower() == "bearer " and v[7:].strip():
                bearer = v[7:].strip()
        elif name == b"api-key" and value:
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


def proxy_key_error(key: str | None, allowed: Iterable[str]) -> bytes | None:
    """With proxy keys configured: the 401 body for a missing or wrong key, else None."""
    from . import errors

    if not key:
        return errors.error_bytes(errors.NO_KEY, code="missing_api_key")
    if not key_in(key, allowed):
        return errors.error_bytes(errors.BAD_KEY, code="invalid_api_key")
    return None
