"""protege.proxy: the capturing OpenAI-compatible proxy (hot path in raw ASGI, the rest in FastAPI)."""

from .app import ProxyApp, create_app
from .hooks import LocalModels, Route, Router

__all__ = ["LocalModels", "ProxyApp", "Route", "Router", "create_app"]
