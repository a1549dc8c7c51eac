"""Local students served by the proxy as OpenAI chat models: ``protege/<name>`` or ``protege/<name>@v2``.

Implements the proxy's ``LocalModels`` hook (``has`` + ``complete``) without importing the proxy.
``has`` runs on every request, so name -> latest version is cached for a moment instead of asking
the store each time; loaded models stay in memory (they are small).
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from typing import Any

from protege.store import jobs as store_jobs

from .backends import FineTuneError
from .local_student import TrainedStudent, load_student

PREFIX = "protege/"
_MODEL = re.compile(r"^protege/([A-Za-z0-9][A-Za-z0-9_.\-]{0,63}?)(?:@v(\d+))?$")


def parse_model(model: str) -> tuple[str, int | None] | None:
    """``protege/name`` -> (name, None); ``protege/name@v3`` -> (name, 3); anything else -> None."""
    m = _MODEL.match(model or "")
    if m is None:
        return None
    return m.group(1), (int(m.group(2)) if m.group(2) else None)


def estimate_tokens(text: str) -> int:
    """~4 characters per token (OpenAI's rule of thumb); the student has no tokenizer of its own."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class StudentRegistry:
    """The proxy's ``LocalModels``: answers chat completions with local scikit-learn students."""

    def __init__(self, store, *, latest_ttl: float = 2.0) -> None:
        self.store = store
        self.latest_ttl = latest_ttl
        self._latest: dict[str, tuple[float, int | None]] = {}
        self._models: dict[tuple[str, int], TrainedStudent] = {}
        self._lock = threading.Lock()

    def _resolve(self, name: str, version: int | None) -> int | None:
        if version is not None:
            key = f"{name}@{version}"
            now = time.monotonic()
            hit = self._latest.get(key)
            if hit is not None and now - hit[0] < self.latest_ttl:
                return hit[1]
            row = store_jobs.get_student(self.store, name, version)
            found = row["version"] if row else None
            self._latest[key] = (now, found)
            return found
        now = time.monotonic()
        hit = self._latest.get(name)
        if hit is not None and now - hit[0] < self.latest_ttl:
            return hit[1]
        row = store_jobs.get_student(self.store, name)
        latest = row["version"] if row else None
        self._latest[name] = (now, latest)
        return latest

    def has(self, model: str) -> bool:
        parsed = parse_model(model)
        if parsed is None:
            return False
        return self._resolve(*parsed) is not None

    def get(self, name: str, version: int | None = None) -> tuple[TrainedStudent, int]:
        resolved = self._resolve(name, version)
        if resolved is None:
            raise FineTuneError(
                f"The model `protege/{name}{'@v' + str(version) if version else ''}` does not exist", param="model", code="model_not_found", status=404
            )
        key = (name, resolved)
        student = self._models.get(key)
        if student is None:
            with self._lock:
                student = self._models.get(key)
                if student is None:
                    student, _row = load_student(self.store, name, resolved)
                    self._models[key] = student
        return student, resolved

    def invalidate(self) -> None:
        """Forget cached latest versions (a new version was just trained in this process)."""
        self._latest.clear()

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        parsed = parse_model(str(body.get("model", "")))
        if parsed is None:
            raise FineTuneError(f"The model `{body.get('model')}` is not a local student", param="model", code="model_not_found", status=404)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise FineTuneError("'messages' must be a non-empty array", param="messages", code="invalid_value")
        student, version = self.get(*parsed)
        answer, label, confidence = student.answer(messages)
        n = body.get("n") or 1
        prompt_tokens = sum(estimate_tokens(_message_text(m.get("content"))) + 3 for m in messages if isinstance(m, dict)) + 3
        completion_tokens = estimate_tokens(answer)
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{PREFIX}{parsed[0]}@v{version}",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": answer, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i in range(int(n))
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens * int(n),
                "total_tokens": prompt_tokens + completion_tokens * int(n),
            },
            "system_fingerprint": f"protege-student-{parsed[0]}-v{version}",
            "service_tier": None,
            "protege": {"label": label, "confidence": round(confidence, 4)},
        }


__all__ = ["StudentRegistry", "estimate_tokens", "parse_model"]
