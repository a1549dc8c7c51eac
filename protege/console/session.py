"""Who may open the console: the admin key, kept for the browser session only.

When the server has admin keys, the login form takes one and the browser gets a *session* cookie
(no expiry: it ends with the browser session) holding an HMAC of the key made with a secret drawn
when this process started. The key itself is never in a cookie, a URL or a log, and a restart
invalidates every session. The cookie is HttpOnly (no script reads it) and SameSite=Strict (no
other site can make the browser send it, which is what protects the console's POST forms); POSTs
whose Origin names another host are refused as well. API clients may present the admin key in the
usual headers instead (``protege.apikit``'s check), so ``curl -H 'Authorization: Bearer ...'`` works.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request

from protege import apikit

COOKIE = "protege_console"
_SECRET = secrets.token_bytes(32)  # per process: sessions end when the server restarts


def admin_keys(request: Request) -> list[str]:
    settings = getattr(request.app.state, "protege_settings", None)
    return list(getattr(settings, "admin_keys", None) or [])


def _mac(key: str) -> str:
    return hmac.new(_SECRET, key.encode(), hashlib.sha256).hexdigest()


def session_token(request: Request, key: str) -> str | None:
    """The cookie value for a correct admin key, None for a wrong one (constant time over the keys)."""
    found = False
    for k in admin_keys(request):
        found |= hmac.compare_digest(key.encode(), k.encode())
    return _mac(key) if found else None


def signed_in(request: Request) -> bool:
    """True when no admin keys are configured, or the request carries a valid session or admin key."""
    keys = admin_keys(request)
    if not keys:
        return True
    token = request.cookies.get(COOKIE)
    if token:
        found = False
        for k in keys:
            found |= hmac.compare_digest(token.encode(), _mac(k).encode())
        if found:
            return True
    return bool(apikit.presented_key(request)) and apikit.admin_key_problem(request, "The console") is None


def same_origin(request: Request) -> bool:
    """A form POST from the console itself (or a client that sends no Origin, such as curl)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


__all__ = ["COOKIE", "admin_keys", "same_origin", "session_token", "signed_in"]
