"""Candidate generation: ask each candidate model for its answer to each eval item.

A candidate is any OpenAI-compatible endpoint (OpenAI, Azure OpenAI, a local server, a Protege
student behind the proxy), called through the official ``openai`` SDK. The SDK's own retries are
switched off (``max_retries=0``) and we retry here instead, so that every attempt is counted and the
back-off is one policy for all candidates: 408/409/429/5xx and connection errors are retried with
exponential back-off and jitter (honouring ``retry-after`` up to a cap); other 4xx are final.
Keys are read from the environment variable NAMED in the spec at call time and never stored.

``openai`` is imported when a candidate is first called, not with this module: the HTTP API imports
the run machinery when the server starts, and the SDK costs 1-2.5 s of start-up on these machines.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from protege.store.messages import message_text

from .breaker import CandidateBreaker

# Request parameters copied from the teacher's captured request so the candidate answers the same task.
PASSTHROUGH_PARAMS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
                      "response_format", "tools", "tool_choice", "n", "presence_penalty", "frequency_penalty")


class CandidateError(ValueError):
    """A candidate spec that cannot be used (bad field, missing key variable)."""


@dataclass
class Candidate:
    name: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    # Azure OpenAI (classic): endpoint + api version; the model is the deployment name.
    azure_endpoint: str | None = None
    api_version: str | None = None
    # None: keep the item's system prompt; "drop": remove it; any other string: replace it.
    system_prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # extra/overriding request parameters
    price_input: float | None = None  # USD per 1M tokens, overrides the price table
    price_output: float | None = None
    timeout: float = 120.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        if "api_key" in data:
            raise CandidateError("give the key as api_key_env (the NAME of an environment variable), not api_key")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise CandidateError(f"unknown candidate field(s): {', '.join(sorted(unknown))}")
        if not data.get("model"):
            raise CandidateError("a candidate needs a model")
        data = dict(data)
        data.setdefault("name", data["model"])
        if not str(data["name"]).strip() or str(data["name"]) == "teacher":
            raise CandidateError("candidate name must be non-empty and not 'teacher'")
        for key in ("price_input", "price_output", "timeout"):
            if data.get(key) is not None:
                try:
                    data[key] = float(data[key])
                except (TypeError, ValueError) as exc:
                    raise CandidateError(f"candidate {data['name']}: {key} must be a number") from exc
        if not isinstance(data.get("params") or {}, dict):
            raise CandidateError(f"candidate {data['name']}: params must be a table")
        data["params"] = dict(data.get("params") or {})
        return cls(**data)

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """``name=...,base_url=...,model=...,api_key_env=...`` (the CLI's ``--candidate``)."""
        data: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise CandidateError(f"--candidate: expected key=value, got {part!r}")
            key = key.strip()
            if key.startswith("params."):
                data.setdefault("params", {})[key[7:]] = _scalar(value)
            else:
                data[key] = value
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def api_key(self) -> str:
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise CandidateError(f"candidate {self.name}: environment variable {self.api_key_env} is not set")
            return value
        # Local servers need no key, but the SDK insists on one: send a placeholder, never a real key.
        return "unused"

    def client(self) -> Any:
        import openai

        if self.azure_endpoint:
            return openai.AsyncAzureOpenAI(
                azure_endpoint=self.azure_endpoint, api_key=self.api_key(),
                api_version=self.api_version or "2025-02-01-preview", max_retries=0, timeout=self.timeout,
            )
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key(), max_retries=0, timeout=self.timeout)


def _scalar(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def apply_system_prompt(messages: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """The messages a candidate sees: the item's, with the system/developer prompt kept, dropped or replaced."""
    if system_prompt is None:
        return [dict(m) for m in messages]
    rest = [dict(m) for m in messages if m.get("role") not in ("system", "developer")]
    if system_prompt == "drop":
        return rest
    return [{"role": "system", "content": system_prompt}] + rest


def build_request(candidate: Candidate, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in (params or {}).items() if k in PASSTHROUGH_PARAMS and v is not None}
    body.update(candidate.params)
    body["model"] = candidate.model
    body["messages"] = apply_system_prompt(messages, candidate.system_prompt)
    body.pop("stream", None)
    return body


def output_text(message: dict[str, Any] | None) -> str:
    """The text an answer is scored on: the content, or the tool calls as compact JSON
    (:func:`protege.store.messages.message_text`, the one reading distill compares with too)."""
    return message_text(message)


@dataclass
class Generation:
    status: str  # "ok" or "error"
    output: str | None
    model: str | None
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int
    error: str | None = None


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def _describe(exc: Exception) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") if isinstance(body, dict) else None
        return f"HTTP {exc.status_code}: {message or exc.message}"
    return f"{type(exc).__name__}: {exc}"


async def generate_one(client: Any, body: dict[str, Any], policy: RetryPolicy | None = None,
                       breaker: CandidateBreaker | None = None) -> Generation:
    """One candidate answer with retries; errors become an ``error`` Generation, never an exception,
    except :class:`~.breaker.CandidateUnavailable` when ``breaker`` says the candidate is down."""
    policy = policy or RetryPolicy()
    attempt = 0
    while True:
        attempt += 1
        started = time.perf_counter()
        try:
            resp = await client.chat.completions.create(**body)
        except Exception as exc:  # noqa: BLE001 - the SDK's errors and transport errors alike
            if breaker is not None:
                breaker.attempt_failed(exc)
            if attempt < policy.max_attempts and _retryable(exc):
                delay = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                hinted = _retry_after(exc)
                if hinted is not None and hinted <= policy.max_delay:
                    delay = max(delay, hinted)
                await asyncio.sleep(delay)
                continue
            if breaker is not None:
                breaker.item_failed(exc)
            return Generation("error", None, body.get("model"), None, None, None, attempt, _describe(exc))
        if breaker is not None:
            breaker.ok()
        latency = (time.perf_counter() - started) * 1000
        data = resp.model_dump() if hasattr(resp, "model_dump") else dict(resp)
        choices = data.get("choices") or [{}]
        usage = data.get("usage") or {}
        return Generation(
            "ok", output_text(choices[0].get("message")), data.get("model") or body.get("model"), latency,
            usage.get("prompt_tokens"), usage.get("completion_tokens"), attempt,
        )


__all__ = ["Candidate", "CandidateError", "Generation", "RetryPolicy", "apply_system_prompt", "build_request",
           "generate_one", "output_text"]
