"""Extension points the proxy calls but does not implement (local students, rollout routing).

Other parts implement these; ``protege/app.py`` passes them to :func:`protege.proxy.create_app`, so
the proxy never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal, Protocol, runtime_checkable


@runtime_checkable
class LocalModels(Protocol):
    """Models served in-process (e.g. ``protege/<name>`` students).

    ``has`` runs on the event loop for every request: an in-memory lookup, never a store query.
    ``complete`` is the minimum (sync; the proxy runs it in a thread). An implementation may add
    the optional :class:`AsyncLocalModels` methods; the proxy uses them when present.
    Exceptions with an int ``status`` (and ``message``, ``code``, ``param``, ``type``) become that
    OpenAI error; any other exception is a 500."""

    def has(self, model: str) -> bool: ...

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A full ``chat.completion`` dict (sync, CPU; the proxy runs it in a thread)."""
        ...


class AsyncLocalModels(LocalModels, Protocol):
    """Optional extras of :class:`LocalModels`, each looked up with ``getattr``."""

    def claims(self, model: str) -> bool:
        """This model name is in the local namespace: answer 404 ``model_not_found`` when not ``has``."""
        ...

    def refresh(self, since: float | None = None) -> None:
        """Re-read what exists, unless a re-read began at or after ``since`` (``time.monotonic()``).
        Blocking: the proxy calls it in a thread, with its request's arrival time, before a 404."""
        ...

    def missing_reason(self, model: str) -> str | None: ...

    def models(self) -> list[dict[str, Any]]:
        """OpenAI model objects listed by ``GET /v1/models`` (in-memory, cheap)."""
        ...

    async def acomplete(self, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """A ``chat.completion`` without blocking the loop."""
        ...

    def astream(self, body: dict[str, Any], timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` dicts as generated (an async generator); raising before its
        first chunk is a refused request (the error is sent as JSON with its status)."""
        ...


@dataclass
class Route:
    route_id: str
    student_model: str
    stage: Literal["shadow", "canary", "full"]
    percent: float = 100.0  # canary share, 0-100
    timeout: float = 30.0
    # share of student-served requests also sent to the teacher in the background (online agreement)
    compare_percent: float = 0.0


@runtime_checkable
class Router(Protocol):
    """Which student (if any) takes part in answering a request. Must be cheap: called per request."""

    def route(self, model: str | None, metadata: dict[str, str]) -> Route | None: ...
