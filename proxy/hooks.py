"""Extension points the proxy calls but does not implement (local students, rollout routing).

Other parts implement these; ``protege/app.py`` passes them to :func:`protege.proxy.create_app`, so
the proxy never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable


@runtime_checkable
class LocalModels(Protocol):
    """Models served in-process (e.g. ``protege/<name>`` students)."""

    def has(self, model: str) -> bool: ...

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A full ``chat.completion`` dict (sync, CPU; the proxy runs it in a thread)."""
        ...


@dataclass
class Route:
    route_id: str
    student_model: str
    stage: Literal["shadow", "canary", "full"]
    percent: float = 100.0  # canary share, 0-100
    timeout: float = 30.0


@runtime_checkable
class Router(Protocol):
    """Which student (if any) takes part in answering a request. Must be cheap: called per request."""

    def route(self, model: str | None, metadata: dict[str, str]) -> Route | None: ...
