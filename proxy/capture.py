"""The capture object: what the request path hands to the writer (cheap to build, parsed later).

Everything expensive (decoding the response, reassembling a stream, hashing the client key) happens
in :meth:`ChatCapture.to_record`, which the capture writer calls in its own thread.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from protege.store import new_completion_id, record_problems, value_problem

from .auth import key_hash
from .streaming import reassemble


# Columns whose values come from the upstream's answer: each is typed on its own (store.records).
_UPSTREAM_FIELDS = ("id", "created", "model", "prompt_tokens", "completion_tokens", "total_tokens", "finish_reason", "request_id")


class ChatCapture:
    __slots__ = (
        "started_at", "t0", "t_first", "t_end", "raw_request", "request", "metadata", "status", "outcome",
        "body", "chunks", "completion", "error", "stream", "upstream", "key", "request_id", "source", "served_by",
        "pair", "record_id", "upstream_id",
    )

    def __init__(self, started_at: float, t0: float, raw_request: bytes, request: dict[str, Any], stream: bool, upstream: str, key: str | None) -> None:
        self.started_at = started_at
        self.t0 = t0
        self.t_first: float | None = None
        self.t_end: float | None = None
        self.raw_request = raw_request
        self.request = request
        self.metadata: dict[str, str] | None = request.get("metadata")
        self.status: int | None = None
        self.outcome = "ok"
        self.body: bytes | None = None  # non-streamed response body
        self.chunks: list[bytes] | None = [] if stream else None  # streamed bytes as received
        self.completion: dict[str, Any] | None = None  # already-built completion (local models)
        self.error: Any = None  # error body (bytes or dict) for failures
        self.stream = stream
        self.upstream = upstream
        self.key = key
        self.request_id: str | None = None
        self.source = "proxy"
        self.served_by: str | None = None
        # A second answer to the same request (shadow/compare) points at the capture the client got.
        self.pair: ChatCapture | None = None
        # The id the client is answered with, minted here (the upstream's may repeat: store/ids.py);
        # the forwarder writes it into the answer and keeps the upstream's in ``upstream_id``.
        self.record_id: str = new_completion_id()
        self.upstream_id: str | None = None

    def to_record(self) -> dict[str, Any]:
        response: dict[str, Any] | None = None
        response_text: str | None = None
        error = self.error
        outcome = self.outcome
        if self.completion is not None:
            response = self.completion
        elif self.stream and self.chunks:
            response, stream_error = reassemble(b"".join(self.chunks))
            if stream_error is not None:
                error = stream_error
                if outcome == "ok":
                    outcome = "upstream_error"
        elif self.body:
            if self.status is not None and self.status < 400:
                try:
                    response = orjson.loads(self.body)
                    response_text = self.body.decode()
                except (orjson.JSONDecodeError, UnicodeDecodeError):
                    response, error, outcome = None, self.body, "upstream_error"
            elif error is None:
                error = self.body
        if response is not None and not isinstance(response, dict):
            response = None
        if outcome == "ok" and response is None:
            outcome = "upstream_error"
        problems: list[str] = []
        resp = response or {}
        usage = resp.get("usage")
        if usage is None:
            usage = {}
        elif not isinstance(usage, dict):
            problems.append(f"'usage' must be an object, got {type(usage).__name__}")
            usage = {}
        choices = resp.get("choices") or []
        if not isinstance(choices, list):
            problems.append(f"'choices' must be a list, got {type(choices).__name__}")
            choices = []
        if isinstance(error, (bytes, bytearray)):
            error = error.decode("utf-8", "replace")
        elif error is not None and not isinstance(error, str):
            error = orjson.dumps(error).decode()
        metadata = dict(self.metadata or {})
        if self.source == "shadow" and self.served_by:
            metadata["served_by"] = self.served_by
        end = self.t_end or self.t0
        comp_id = self.record_id
        upstream_id = self.upstream_id
        if response is not None and response.get("id") != comp_id:
            # A reassembled stream or a local model's completion still has the upstream's id: the
            # stored answer is the one the client saw.
            if upstream_id is None and response.get("id") is not None:
                raw_id = response["id"]
                upstream_id = raw_id if isinstance(raw_id, str) else orjson.dumps(raw_id).decode()
            response = dict(response, id=comp_id)
            response_text = None
        try:
            request_text = self.raw_request.decode()
        except UnicodeDecodeError:
            request_text = orjson.dumps(self.request).decode()
        if response is not None and response_text is None:
            response_text = orjson.dumps(response).decode()
        rec = {
            "id": comp_id,
            "created": _whole(resp.get("created")) or int(self.started_at),
            "started_at": self.started_at,
            "finished_at": self.started_at + (end - self.t0),
            "model_requested": self.request.get("model"),
            "model": (response or {}).get("model"),
            "request": request_text,
            "response": response_text,
            "metadata": orjson.dumps(metadata).decode(),
            "store": self.request.get("store") if isinstance(self.request.get("store"), bool) else None,
            "status_code": self.status,
            "outcome": outcome,
            "error": error,
            "latency_ms": (end - self.t0) * 1000.0,
            "ttft_ms": (self.t_first - self.t0) * 1000.0 if self.t_first is not None else None,
            "prompt_tokens": _whole(usage.get("prompt_tokens")),
            "completion_tokens": _whole(usage.get("completion_tokens")),
            "total_tokens": _whole(usage.get("total_tokens")),
            "finish_reason": choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None,
            **self._origin(),
            "paired_with": self.pair.record_id if self.pair is not None else None,
            "upstream_id": upstream_id,
        }
        if problems or not _fits(rec):
            problems += record_problems(rec, _UPSTREAM_FIELDS)
        if problems:
            self._untyped(rec, problems)
        return rec

    def _untyped(self, rec: dict[str, Any], problems: list[str]) -> None:
        """An answer whose fields do not fit their columns: kept with its raw body as
        ``invalid_response`` (never in the Stored API), with what was wrong in ``error``."""
        for name in _UPSTREAM_FIELDS:
            if value_problem(name, rec.get(name)) is not None:
                rec[name] = None
        if rec["id"] is None:
            rec["id"] = self.record_id = new_completion_id()
        if rec["created"] is None:
            rec["created"] = int(self.started_at)
        if self.body is not None and rec["response"] is None:
            rec["response"] = self.body.decode("utf-8", "replace")
        rec["outcome"] = "invalid_response"
        rec["error"] = "; ".join(problems)

    def approx_bytes(self) -> int:
        """Memory this capture holds, for the writer's budget (the parsed request counts twice)."""
        n = 2 * len(self.raw_request) + 2048
        if self.body:
            n += len(self.body)
        if self.chunks:
            n += sum(map(len, self.chunks))
        return n

    def raw_record(self, problem: str) -> dict[str, Any]:
        """The capture's raw bytes as a record, when :meth:`to_record` itself fails."""
        raw = self.body if self.body is not None else b"".join(self.chunks or [])
        end = self.t_end or self.t0
        self.record_id = self.record_id or new_completion_id()
        return {
            "id": self.record_id,
            "created": int(self.started_at),
            "started_at": self.started_at,
            "finished_at": self.started_at + (end - self.t0),
            "model_requested": self.request.get("model") if isinstance(self.request.get("model"), str) else None,
            "request": self.raw_request.decode("utf-8", "replace"),
            "response": raw.decode("utf-8", "replace") if raw else None,
            "metadata": "{}",
            "status_code": self.status,
            "outcome": "invalid_response",
            "error": problem,
            "latency_ms": (end - self.t0) * 1000.0,
            **self._origin(),
        }

    def _origin(self) -> dict[str, Any]:
        """Where the capture came from and went (plain attributes: cannot fail, so the raw
        fallback record can use it too)."""
        return {
            "stream": self.stream, "upstream": self.upstream, "key_hash": key_hash(self.key),
            "request_id": self.request_id, "source": self.source, "served_by": self.served_by,
        }


_I32 = 2**31


def _fits(rec: dict[str, Any]) -> bool:
    """The common case in one expression (~1 µs): every upstream-derived value fits its column.
    When not, :func:`record_problems` says which and why."""
    created = rec["created"]
    if type(rec["id"]) is not str or type(created) is not int or not -(2**63) <= created < 2**63:
        return False
    for name in ("model", "finish_reason", "request_id"):
        v = rec[name]
        if v is not None and type(v) is not str:
            return False
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        v = rec[name]
        if v is not None and (type(v) is not int or not -_I32 <= v < _I32):
            return False
    return True


def _whole(value: Any) -> Any:
    """A float that is a whole number (``1700000000.0``) as an int; anything else unchanged, to be typed."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def now() -> float:
    return time.time()
