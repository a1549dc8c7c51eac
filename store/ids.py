"""Completion ids that Protege mints itself, so that one id names exactly one capture.

Upstreams cannot be trusted to keep ids unique: Ollama answers ``chatcmpl-<0..998>``, some servers
answer ``"0"`` every time, vLLM echoes the client's ``X-Request-Id``. Protege therefore answers every
captured request with an id of its own, shaped like OpenAI's (``chatcmpl-`` and 29 base62
characters) and keeps the upstream's id beside it (``upstream_id``).
"""

from __future__ import annotations

import os

_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Each random byte picks a character by ``byte % 62``: one C-level translate instead of a Python
# loop (this runs once per proxied request). The slight bias (8 characters are 5/256 likely, the
# rest 4/256) still leaves ~171 bits of entropy in 29 characters.
_TABLE = bytes(_ALPHABET[b % 62] for b in range(256))
_LENGTH = 29


def new_completion_id() -> str:
    """A fresh ``chatcmpl-`` id with 29 random base62 characters (about half a microsecond)."""
    return "chatcmpl-" + os.urandom(_LENGTH).translate(_TABLE).decode("ascii")


__all__ = ["new_completion_id"]
