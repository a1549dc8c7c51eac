"""uvicorn's server, recording where it listens beside the database (``store.served``).

The record is written once the sockets are bound, so it carries the real address (``--port 0``
gives the port the OS chose), and removed once the server has shut down: inside uvicorn's
``shutdown()``, because uvicorn re-raises SIGTERM/SIGINT after ``serve()`` returns and the
process ends there. A SIGKILL leaves the record; its dead PID makes every reader ignore it.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import uvicorn

from protege.store import without_password
from protege.store.served import remove_record, write_record

log = logging.getLogger("protege.app")


def listen_url(sockets: list[Any]) -> str | None:
    """``http://host:port`` a client on this machine can reach (a wildcard bind is reached on loopback)."""
    for sock in sockets:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        host, port = sock.getsockname()[:2]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return None


class RecordedServer(uvicorn.Server):
    """A ``uvicorn.Server`` that records itself beside ``db`` while it listens."""

    def __init__(self, config: uvicorn.Config, db: str) -> None:
        super().__init__(config)
        self._db = db
        self._recorded = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit or not self.started:
            return
        url = listen_url([s for server in self.servers for s in server.sockets])
        if url is not None:
            write_record(self._db, url)  # a few bytes, once, before the first request (none for a URL store)
            self._recorded = True
            log.info("protege listening on %s (store %s)", url, without_password(self._db))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets=sockets)
        finally:
            self.forget()

    def forget(self) -> None:
        """Remove the record (if this server wrote it and it is still this process's)."""
        if self._recorded:
            remove_record(self._db)
            self._recorded = False
