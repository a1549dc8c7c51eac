"""Students served by the proxy as OpenAI chat models: ``protege/<name>`` or ``protege/<name>@v2``.

Implements the proxy's ``LocalModels`` hook without importing the proxy. Three kinds, by manifest:

- the scikit-learn classifier (no ``kind``, or ``"classifier"``): answered in a thread, ~1 ms;
- ``"lora"``: an open-weight LoRA student loaded once (in a thread) and answered by a batching
  generation worker (:mod:`protege.distill.finetune.served`);
- endpoint students: any OpenAI-compatible server registered with ``protege students add``
  (:mod:`protege.distill.finetune.endpoints`); they have no versions.

Resolution runs on every request, on the event loop, so it reads an in-memory index only. The
index (names, versions, what the gate said, endpoints) is rebuilt from the store off the loop: at
start, in a background thread when it is older than ``latest_ttl``, and when a ``protege/`` model is
not found (the proxy awaits :meth:`refresh` in a thread before answering 404).

The bare name means the latest version that passed its gate, was promoted by hand, or was never put
to a gate (trained by hand); ``@vN`` pins a version, whatever the gate said.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from protege.store import jobs as store_jobs
from protege.store.messages import content_text

from protege.distill.finetune.interface import FineTuneError
from protege.distill.finetune.endpoints import EndpointStudent
from protege.distill.finetune.base import sha256_file
from protege.distill.finetune.generation import ArtifactError
from protege.distill.finetune.served import LoraStudent

log = logging.getLogger("protege.distill.finetune.students")

PREFIX = "protege/"
_MODEL = re.compile(r"^protege/([A-Za-z0-9][A-Za-z0-9_.\-]{0,63}?)(?:@v(\d+))?$")
DEFAULT_TIMEOUT = 60.0


def parse_model(model: str) -> tuple[str, int | None] | None:
    """``protege/name`` -> (name, None); ``protege/name@v3`` -> (name, 3); anything else -> None."""
    m = _MODEL.match(model or "")
    if m is None:
        return None
    return m.group(1), (int(m.group(2)) if m.group(2) else None)


def estimate_tokens(text: str) -> int:
    """~4 characters per token (OpenAI's rule of thumb); the classifier has no tokenizer of its own."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def model_id(name: str, version: int | None = None) -> str:
    return f"{PREFIX}{name}" + (f"@v{version}" if version is not None else "")


def not_found(model: str, reason: str | None = None) -> FineTuneError:
    """OpenAI's 404 for a model that does not exist."""
    msg = f"The model `{model}` does not exist or you do not have access to it."
    return FineTuneError(msg + (f" {reason}" if reason else ""), code="model_not_found", status=404)


@dataclass
class _Index:
    """What the store says, read in one go off the event loop."""

    versions: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # name -> version -> row
    bare: dict[str, int | None] = field(default_factory=dict)  # name -> version the bare name serves
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    built_at: float = 0.0
    started_at: float = -1.0  # when the rebuild that produced it began reading the store


def completion_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A finished completion as OpenAI stream chunks (for students that answer all at once)."""
    base = {k: completion.get(k) for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    extra = {"usage": None} if include_usage else {}
    out = []
    for ch in completion.get("choices") or []:
        msg = ch.get("message") or {}
        out.append(dict(base, choices=[{"index": ch["index"], "delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None, "finish_reason": None}], **extra))
        delta: dict[str, Any] = {}
        if msg.get("content"):
            delta["content"] = msg["content"]
        if msg.get("tool_calls"):
            delta["tool_calls"] = [dict(c, index=k) for k, c in enumerate(msg["tool_calls"])]
        if delta:
            out.append(dict(base, choices=[{"index": ch["index"], "delta": delta, "logprobs": None, "finish_reason": None}], **extra))
        out.append(dict(base, choices=[{"index": ch["index"], "delta": {}, "logprobs": None, "finish_reason": ch.get("finish_reason")}], **extra))
    if include_usage:
        out.append(dict(base, choices=[], usage=completion.get("usage")))
    return out


class StudentRegistry:
    """The proxy's ``LocalModels``: every ``protege/...`` model, whatever serves it."""

    def __init__(self, store, *, latest_ttl: float = 2.0, timeout: float = DEFAULT_TIMEOUT, max_batch: int = 8, batch_window: float = 0.004) -> None:
        self.store = store
        self.latest_ttl = latest_ttl
        self.timeout = timeout
        self.max_batch = max_batch
        self.batch_window = batch_window
        self._index = _Index()
        self._refresh_lock = threading.Lock()
        self._refreshing = False
        self._last_error: str | None = None
        self._models: dict[tuple[str, int], Any] = {}
        self._endpoints: dict[str, Any] = {}
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self._lock = threading.Lock()
        self.refresh()

    # -- the index --------------------------------------------------------------------------------
    def refresh(self, since: float | None = None) -> None:
        """Rebuild the index from the store (blocking: call it off the event loop).

        ``since`` (a ``time.monotonic()`` value): a rebuild that began at or after it is recent
        enough. Callers missing a model pass the time their request arrived, so that concurrent
        misses share one rebuild instead of querying the store once each."""
        with self._refresh_lock:
            if since is not None and self._index.started_at >= since:
                return
            started = time.monotonic()
            try:
                rows = store_jobs.list_students(self.store)
                verdicts = store_jobs.student_verdicts(self.store)
                endpoints = store_jobs.list_endpoint_students(self.store)
            except Exception as exc:  # keep serving what we knew
                # A warning once per distinct error (a store closing at shutdown repeats one), not
                # debug: a refresh that always fails serves no student, and says why only here.
                level = logging.DEBUG if str(exc) == self._last_error else logging.WARNING
                self._last_error = str(exc)
                log.log(level, "student index refresh failed (students are served from the last index): %s", exc)
                return
            self._last_error = None
            idx = _Index(built_at=time.monotonic(), started_at=started)
            for r in rows:
                idx.versions.setdefault(r["name"], {})[int(r["version"])] = r
            for name, versions in idx.versions.items():
                ok = [v for v in versions if store_jobs.servable(verdicts.get(model_id(name, v)))]
                idx.bare[name] = max(ok) if ok else None
            idx.endpoints = {e["name"]: e for e in endpoints}
            self._index = idx

    def _fresh(self) -> _Index:
        """The index, refreshed when stale: in a background thread when called on an event loop
        (the request goes on with what is known), inline otherwise."""
        idx = self._index
        if time.monotonic() - idx.built_at >= self.latest_ttl:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                self.refresh()
                return self._index
            with self._lock:
                if self._refreshing:
                    return idx
                self._refreshing = True

            def run() -> None:
                try:
                    self.refresh()
                finally:
                    self._refreshing = False

            threading.Thread(target=run, name="protege-students-index", daemon=True).start()
        return idx

    def claims(self, model: str) -> bool:
        """Is this model name ours to answer (or to refuse with a 404)?"""
        return isinstance(model, str) and model.startswith(PREFIX)

    def lookup(self, model: str) -> tuple[str, str, int | None] | None:
        """(kind, name, version) of a servable model, from the index; kind "endpoint" or "version"."""
        parsed = parse_model(model)
        if parsed is None:
            return None
        name, version = parsed
        idx = self._fresh()
        if version is None:
            if name in idx.endpoints:
                return "endpoint", name, None
            v = idx.bare.get(name)
            return ("version", name, v) if v is not None else None
        if version in idx.versions.get(name, {}):
            return "version", name, version
        return None

    def has(self, model: str) -> bool:
        return self.lookup(model) is not None

    def missing_reason(self, model: str) -> str | None:
        parsed = parse_model(model)
        if parsed is None:
            return None
        name, version = parsed
        versions = self._index.versions.get(name)
        if versions and version is None:
            return f"No version of `{PREFIX}{name}` passed its gate or was promoted; pin one with @vN or promote it."
        if versions:
            return f"`{PREFIX}{name}` has versions {', '.join('v' + str(v) for v in sorted(versions))}."
        return None

    def models(self) -> list[dict[str, Any]]:
        """Every servable student, in OpenAI's model-object shape."""
        idx = self._fresh()
        out = []
        for name, versions in sorted(idx.versions.items()):
            if idx.bare.get(name) is not None and name not in idx.endpoints:
                out.append({"id": model_id(name), "object": "model", "created": int(versions[idx.bare[name]]["created_at"]), "owned_by": "protege"})
            for v, row in sorted(versions.items()):
                out.append({"id": model_id(name, v), "object": "model", "created": int(row["created_at"]), "owned_by": "protege"})
        for name, e in sorted(idx.endpoints.items()):
            out.append({"id": model_id(name), "object": "model", "created": int(e["created_at"]), "owned_by": "protege"})
        return out

    def invalidate(self) -> None:
        """Forget the index (a new version was just trained in this process): the next use rebuilds it."""
        self._index = _Index()

    # -- loading ----------------------------------------------------------------------------------
    def _student(self, model: str, *, sync_refresh: bool = True) -> Any:
        """The object answering ``model`` (loads it: blocking, so called in a thread on the proxy)."""
        found = self.lookup(model)
        if found is None and sync_refresh:
            self.refresh()
            found = self.lookup(model)
        if found is None:
            raise not_found(model, self.missing_reason(model))
        kind, name, version = found
        if kind == "endpoint":
            return self._endpoint(name)
        assert version is not None
        return self._load(name, version)

    def _endpoint(self, name: str) -> Any:
        row = self._index.endpoints[name]
        cur = self._endpoints.get(name)
        if cur is None or not cur.same(row):
            cur = self._endpoints[name] = EndpointStudent(row)
        return cur

    def _load(self, name: str, version: int) -> Any:
        key = (name, version)
        student = self._models.get(key)
        if student is not None:
            return student
        with self._lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            student = self._models.get(key)
            if student is None:
                student = self._load_version(name, version)
                self._models[key] = student
        return student

    def _load_version(self, name: str, version: int) -> Any:
        row = self._index.versions.get(name, {}).get(version) or store_jobs.get_student(self.store, name, version)
        if row is None:
            raise not_found(model_id(name, version))
        manifest = row.get("manifest") or {}
        if manifest.get("kind") == "lora":
            return self._load_lora(row)
        from protege.distill.finetune.local_student import load_student

        student, _row = load_student(self.store, name, version)
        return _Classifier(student, name, version)

    def _load_lora(self, row: dict[str, Any]) -> Any:
        manifest_path = store_jobs.resolve_artifact(self.store, row["manifest_path"])
        if not manifest_path.is_file():
            raise FineTuneError(f"the manifest of {model_id(row['name'], row['version'])} is missing", code="artifact_missing", status=500)
        if row.get("sha256") and sha256_file(manifest_path) != row["sha256"]:
            raise FineTuneError(f"the manifest of {model_id(row['name'], row['version'])} does not match its recorded sha256", code="artifact_tampered", status=500)
        manifest = json.loads(manifest_path.read_text())
        try:
            return LoraStudent.load(
                manifest_path.parent, manifest, Path(self.store.data_dir), model_id=model_id(row["name"], row["version"]),
                max_batch=self.max_batch, window=self.batch_window,
            )
        except ArtifactError as exc:
            raise FineTuneError(str(exc), code="artifact_tampered", status=500) from None

    def get(self, name: str, version: int | None = None) -> tuple[Any, int | None]:
        """The loaded student object and its version (None for endpoint students)."""
        found = self.lookup(model_id(name, version))
        student = self._student(model_id(name, version))
        return student, (found[2] if found else getattr(student, "version", None))

    def preload(self, model: str) -> None:
        """Load a student now (blocking), so that its first request does not pay for it."""
        self._student(model)

    def close(self) -> None:
        for s in list(self._models.values()):
            close = getattr(s, "close", None)
            if close is not None:
                close()

    # -- answering --------------------------------------------------------------------------------
    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Blocking chat completion (threads: the gate, the proxy's fallback)."""
        model = str(body.get("model", ""))
        if parse_model(model) is None:
            raise not_found(model)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise FineTuneError("'messages' must be a non-empty array", param="messages", code="invalid_value")
        return _translate_sync(lambda: self._student(model).complete(body, self.timeout))

    async def _astudent(self, model: str) -> Any:
        found = self.lookup(model)
        if found is not None:
            kind, name, version = found
            if kind == "endpoint":
                return self._endpoint(name)
            loaded = self._models.get((name, version))  # type: ignore[arg-type]
            if loaded is not None:
                return loaded
        return await asyncio.to_thread(self._student, model)

    async def acomplete(self, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """A chat completion without blocking the loop (loading, if needed, runs in a thread)."""
        model = str(body.get("model", ""))
        student = await self._astudent(model)
        try:
            return await student.acomplete(body, timeout or self.timeout)
        except Exception as exc:
            raise _translate(exc) from None

    async def astream(self, body: dict[str, Any], timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` dicts; raises before the first chunk when the request is refused."""
        model = str(body.get("model", ""))
        student = await self._astudent(model)
        try:
            async for part in student.astream(body, timeout or self.timeout):
                yield part
        except Exception as exc:
            raise _translate(exc) from None


def _translate(exc: Exception) -> Exception:
    """Errors of the kinds' own modules as FineTuneError (status, code, param: OpenAI's shape)."""
    if isinstance(exc, FineTuneError):
        return exc
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        err = FineTuneError(getattr(exc, "message", str(exc)), param=getattr(exc, "param", None), code=getattr(exc, "code", None), status=status)
        err.type = getattr(exc, "type", None)  # type: ignore[attr-defined]
        return err
    return exc


def _translate_sync(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        raise _translate(exc) from None


class _Classifier:
    """The scikit-learn student behind the same interface as the other kinds."""

    def __init__(self, student: Any, name: str, version: int) -> None:
        self.student = student
        self.name = name
        self.version = version

    def complete(self, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise FineTuneError("'messages' must be a non-empty array", param="messages", code="invalid_value")
        answer, label, confidence = self.student.answer(messages)
        n = body.get("n") or 1
        prompt_tokens = sum(estimate_tokens(content_text(m.get("content"))) + 3 for m in messages if isinstance(m, dict)) + 3
        completion_tokens = estimate_tokens(answer)
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id(self.name, self.version),
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
            "system_fingerprint": f"protege-student-{self.name}-v{self.version}",
            "service_tier": None,
            "protege": {"label": label, "confidence": round(confidence, 4)},
        }

    async def acomplete(self, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.complete, body)

    async def astream(self, body: dict[str, Any], timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for part in completion_chunks(await self.acomplete(body, timeout), include_usage):
            yield part


__all__ = ["StudentRegistry", "completion_chunks", "estimate_tokens", "model_id", "not_found", "parse_model"]
