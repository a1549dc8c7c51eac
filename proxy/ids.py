"""Answering the client with Protege's own completion id instead of the upstream's.

The upstream's id may name several captures (local servers repeat ids), so every captured answer is
rewritten to carry the capture's minted id (store/ids.py). This runs on the request path, so it works
on bytes: the ``"id":"<upstream>"`` pair is found and replaced, and the JSON is parsed only when the
top-level id is not the body's first key (llama.cpp and Azure sort keys alphabetically). A stream is
rewritten line by line with the pair learned from its first chunk, so every chunk carries the same id.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# A JSON "id" key with a string value (quotes inside JSON strings are escaped, so a match never
# starts inside another string).
_ID_PAIR = re.compile(rb'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')
_LEADING = re.compile(rb"\s*\{\s*")
_EMPTY_ID = re.compile(rb'"id"\s*:\s*""')


def _pair(new_id: str) -> bytes:
    return b'"id":' + orjson.dumps(new_id)


def _text(raw: bytes) -> str | None:
    try:
        value = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def rewrite_body(body: bytes, new_id: str) -> tuple[bytes, str | None]:
    """(the JSON body with its top-level ``id`` set to ``new_id``, the upstream's id as text).

    Bodies that are not a JSON object are returned unchanged (upstream id ``None``).
    """
    new = _pair(new_id)
    m = _ID_PAIR.search(body)
    if m is not None:
        lead = _LEADING.match(body)
        if lead is not None and lead.end() == m.start():  # the first key of the top-level object
            return body[: m.start()] + new + body[m.end() :], _text(m.group(1))
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, None
    if not isinstance(obj, dict):
        return body, None
    upstream = obj.get("id")
    if isinstance(upstream, str):
        hits = [h for h in _ID_PAIR.finditer(body) if _text(h.group(1)) == upstream]
        if len(hits) == 1:  # the top-level pair, elsewhere in the object: keep every other byte
            h = hits[0]
            return body[: h.start()] + new + body[h.end() :], upstream
    if "id" in obj:
        obj["id"] = new_id
    else:
        obj = {"id": new_id, **obj}
    return orjson.dumps(obj), _as_text(upstream)


class StreamIdRewriter:
    """Rewrites the completion id in every chunk of an SSE stream, byte-level.

    Complete lines are passed on at once; only a trailing partial line is held back (a client cannot
    use half a line, and the pair must not be split between two network reads). The pair to replace
    is learned from the first ``data:`` line that carries an id (one small parse per stream). Azure
    starts a stream with a ``prompt_filter_results`` chunk whose id is ``""``: that one is rewritten
    too, and the id is learned from the next.
    """

    __slots__ = ("_new", "_pattern", "_buf", "_tries", "_blank", "upstream_id")

    def __init__(self, new_id: str) -> None:
        self._new = _pair(new_id)
        self._pattern: re.Pattern[bytes] | None = None
        self._buf = b""
        self._tries = 3  # chunks without an id before giving up (then bytes pass untouched)
        self._blank = False  # the stream has had chunks with an empty id
        self.upstream_id: str | None = None

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            self._buf = buf
            return b""
        head, self._buf = (buf, b"") if cut == len(buf) else (buf[:cut], buf[cut:])
        return self._rewrite(head)

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return self._rewrite(rest) if rest else rest

    def _rewrite(self, data: bytes) -> bytes:
        if self._pattern is None and self._tries > 0:
            self._learn(data)
        if self._blank:
            data = _EMPTY_ID.sub(self._new, data)
        if self._pattern is not None:
            data = self._pattern.sub(self._new, data)
        return data

    def _learn(self, data: bytes) -> None:
        for line in data.splitlines():
            if not line.startswith(b"data:"):
                continue
            try:
                obj = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("id") is None:
                self._tries -= 1
                if self._tries <= 0:
                    return
                continue
            upstream = obj["id"]
            if upstream == "":
                self._blank = True
                continue
            if isinstance(upstream, str):
                value = next((h.group(1) for h in _ID_PAIR.finditer(line) if _text(h.group(1)) == upstream), None)
                if value is None:
                    return
                self._pattern = re.compile(rb'"id"\s*:\s*"' + re.escape(value) + rb'"')
            elif isinstance(upstream, (int, float)) and not isinstance(upstream, bool):
                self._pattern = re.compile(rb'"id"\s*:\s*' + re.escape(orjson.dumps(upstream)) + rb"(?![\w.])")
            self.upstream_id = _as_text(upstream)
            return
