"""Who is calling on the hot path: the client's key (Bearer or api-key) against the proxy keys.

The raw key never leaves memory: captures record only :func:`key_hash`, and nothing here logs.
"""

from __future__ import annotations

from typing import Iterable

# One key parser for the whole app (see protege.keys): re-exported for the proxy's modules.
from protege.keys import client_key, key_hash, key_in

__all__ = ["admit", "client_key", "key_hash", "key_in", "proxy_key_error"]


def admit(key: str | None, allowed: list[str]) -> tuple[bool, bytes | None]:
    """``(use_server_key, denial)`` for a forwarded request. With proxy keys configured the client's
    key must be one of them (else ``denial`` is the 401 body) and stays here: the upstream gets the
    server's key. Without, a client key passes through and only a keyless request uses the server's."""
    if allowed:
        return True, proxy_key_error(key, allowed)
    return key is None, None


def proxy_key_error(key: str | None, allowed: Iterable[str]) -> bytes | None:
    """With proxy keys configured: the 401 body for a missing or wrong key, else None."""
    from . import errors

    if not key:
        return errors.error_bytes(errors.NO_KEY, code="missing_api_key")
    if not key_in(key, allowed):
        return errors.error_bytes(errors.BAD_KEY, code="invalid_api_key")
    return None
