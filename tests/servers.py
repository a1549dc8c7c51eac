"""The real app (protege.app.build_app) under uvicorn on 127.0.0.1, for serving tests."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class AppServer:
    def __init__(self, settings: Any, store: Any = None) -> None:
        import uvicorn

        from protege.app import build_app

        self.app, self.store, self.writer = build_app(settings, store=store)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the app did not start")
            time.sleep(0.02)

    @property
    def registry(self) -> Any:
        return self.app.state.protege_students

    def records(self) -> list[dict]:
        from protege.store import iter_records

        assert self.writer.flush(10)
        return list(iter_records(self.store))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


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
