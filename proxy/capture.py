"""The capture object: what the request path hands to the writer (cheap to build, parsed later).

Everything expensive (decoding the response, reassembling a stream, hashing the client key) happens
in :meth:`ChatCapture.to_record`, which the capture writer calls in its own thread.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from protege.store import new_completion_id

from .auth import key_hash
from .streaming import reassemble


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
        usage = (response or {}).get("usage") or {}
        choices = (response or {}).get("choices") or []
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
        return {
            "id": comp_id,
            "created": int((response or {}).get("created") or self.started_at),
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
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "total_tokens": usage.get("total_tokens"),
            "finish_reason": choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None,
            "stream": self.stream,
            "upstream": self.upstream,
            "key_hash": key_hash(self.key),
            "request_id": self.request_id,
            "source": self.source,
            "served_by": self.served_by,
            "paired_with": self.pair.record_id if self.pair is not None else None,
            "upstream_id": upstream_id,
        }


def now() -> float:
    return time.time()
