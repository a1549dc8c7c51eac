"""Request paths, normalised before routing, and the shapes that are never forwarded upstream.

A path is routed by what a server would make of it, not by its spelling: ``/v1//chat/completions``,
``/v1/./chat/completions``, ``/v1/x/../chat/completions`` and ``/v1/chat/completions/`` are all
``/v1/chat/completions``. Without this, such spellings missed the Stored Completions routes, fell
through to the passthrough and reached the upstream with the server's key, where OpenAI answered
from its own Stored Completions API.

Forwarding is checked once more on a deliberately suspicious reading of the path (decoded again,
backslashes as slashes, ``;params`` dropped, case folded), so that an upstream or a proxy in front
of it that decodes twice or folds case still never receives a Stored-API shape with our key.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

# Characters kept as they are when a decoded path is sent on (RFC 3986 pchar minus "%").
_PCHAR = "/:@!$&'()*+,;=-._~"


def normalise(path: str) -> str:
    """RFC 3986 dot-segment removal, empty segments dropped, no trailing slash ("/" stays "/")."""
    if "//" not in path and "/." not in path and (len(path) < 2 or not path.endswith("/")):
        return path  # the common case, without allocating
    segments: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    return "/" + "/".join(segments)


def encode(path: str) -> str:
    """A decoded path as it goes on the wire: what the receiver decodes is what we routed on
    (a literal ``%`` stays ``%25``, ``?`` and ``#`` cannot start a query or fragment)."""
    return quote(path, safe=_PCHAR)


def _suspicious_segments(path: str) -> list[str]:
    for _ in range(3):  # undo double (and triple) percent-encoding
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    path = path.replace("\\", "/").lower()
    segs = [seg.split(";", 1)[0].strip() for seg in normalise(path).split("/")]
    return [s for s in normalise("/" + "/".join(segs)).split("/") if s]


def stored_api_shape(path: str) -> bool:
    """True for any path that reads as ``.../chat/completions...``: chat creates are handled by the
    proxy itself and everything else there is the Stored Completions API, served from our store or
    refused, never forwarded with the server's key."""
    segs = _suspicious_segments(path)
    return any(a == "chat" and b == "completions" for a, b in zip(segs, segs[1:]))
