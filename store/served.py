"""Which process serves a store: a small record beside the database file.

One process writes a DuckDB file. While ``protege serve`` holds it, every other process (the CLI,
an eval run that wants the proxy serving this store) finds the server through this record:
``<db>.serve.json`` beside the database, holding the URL the server listens on and its PID. The
server writes it once it listens and removes it when it stops; a record left by a killed server
is recognised by its dead PID and ignored (and replaced by the next server).

Nothing secret is in it: the CLI takes the admin key from the environment, never from a file.

A PostgreSQL store (``--db postgresql://...``) has no record: its database has many writers (several
``protege serve`` replicas, workers, the CLI), so no one server holds it. Every process, the CLI
included, talks to PostgreSQL directly, and ``protege serve`` never refuses to start because another
replica serves the same database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

SUFFIX = ".serve.json"


def record_path(db: str | os.PathLike[str]) -> Path | None:
    """Where a server of ``db`` records itself; None for an in-memory store or a database URL (a
    database server has many writers: the CLI opens it itself)."""
    text = os.fspath(db)
    if text.startswith(":memory:") or "://" in text:
        return None
    path = Path(text).absolute()
    return path.with_name(path.name + SUFFIX)


def write_record(db: str | os.PathLike[str], url: str, pid: int | None = None) -> Path | None:
    """Record that this process serves ``db`` at ``url`` (atomically: readers never see half)."""
    path = record_path(db)
    if path is None:
        return None
    body = {"url": url.rstrip("/"), "pid": os.getpid() if pid is None else pid, "db": str(Path(os.fspath(db)).absolute())}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(body))
    os.replace(tmp, path)
    return path


def remove_record(db: str | os.PathLike[str], pid: int | None = None) -> None:
    """Remove the record if it is this process's (a newer server's record is left alone)."""
    path = record_path(db)
    if path is None:
        return
    found = _load(path)
    if found is not None and found.get("pid") == (os.getpid() if pid is None else pid):
        path.unlink(missing_ok=True)


def read_record(db: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"url", "pid", "db"}`` of the live server of ``db``, or None (no record, or its process is gone)."""
    path = record_path(db)
    if path is None:
        return None
    found = _load(path)
    if found is None or not isinstance(found.get("url"), str) or not _alive(found.get("pid")):
        return None
    return found


def server_url(db: str | os.PathLike[str]) -> str | None:
    """The base URL (``http://127.0.0.1:8000``) of the server holding ``db``, if one runs."""
    found = read_record(db)
    return None if found is None else found["url"]


def _load(path: Path) -> dict[str, Any] | None:
    try:
        found = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
