"""The real app (protege.app.build_app) under uvicorn on 127.0.0.1, for serving tests."""

from __future__ import annotations

from typing import Any

from tests.fixtures.http import Served


class AppServer:
    def __init__(self, settings: Any, store: Any = None) -> None:
        from protege.app import build_app

        self.app, self.store, self.writer = build_app(settings, store=store)
        self.served = Served(self.app, fast=False)
        self.port, self.url, self.base_url = self.served.port, self.served.url, self.served.base_url

    @property
    def registry(self) -> Any:
        return self.app.state.protege_students

    def records(self) -> list[dict]:
        from protege.store import iter_records

        assert self.writer.flush(10)
        return list(iter_records(self.store))

    def stop(self) -> None:
        self.served.stop()


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, decoded JSON) of one plain HTTP call (stdlib: no client library needed)."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
