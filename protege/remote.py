"""The CLI's side of ``POST /protege/v1/cli``: send a command to the server that holds the store.

``protege.cli.main`` calls :func:`run` when a live ``protege serve`` records itself beside the
selected database (``store.served``) and the command opens the store. The output comes back as
NDJSON lines and is written to this process's stdout/stderr as it arrives; the exit status is the
command's. The admin key is ``PROTEGE_ADMIN_KEY``, else the first configured admin key
(``PROTEGE_ADMIN_KEYS`` / protege.toml): never a key from a file Protege wrote. Stdlib HTTP only:
a short-lived CLI process should not pay for an HTTP client library's import.
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

from . import clikit

PATH = "/protege/v1/cli"
KEY_HINT = "set PROTEGE_ADMIN_KEY to one of the server's admin keys (admin_keys / PROTEGE_ADMIN_KEYS)"


def admin_key() -> str | None:
    """The key the CLI presents: PROTEGE_ADMIN_KEY, else the first configured admin key."""
    key = os.environ.get("PROTEGE_ADMIN_KEY", "").strip()
    if key:
        return key
    keys = clikit.settings().admin_keys
    return keys[0] if keys else None


def run(record: dict[str, Any], argv: list[str], columns: int = 80, timeout: float | None = None) -> int:
    """Run ``argv`` (what follows ``protege``, without --db/--data-dir) in the server of ``record``;
    print its output here and return its exit status (1 with one line on stderr if it cannot)."""
    url = str(record["url"]).rstrip("/")
    where = f"the server holding {record.get('db') or clikit.settings().db} at {url} (PID {record.get('pid')})"
    body = orjson.dumps({"argv": argv, "cwd": os.getcwd(), "columns": int(columns)})
    headers = {"content-type": "application/json", "accept": "application/x-ndjson"}
    key = admin_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + PATH, data=body, method="POST", headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - the recorded local server
    except urllib.error.HTTPError as exc:
        return _refused(exc, where)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return _fail(f"cannot reach {where}: {reason}; if it is stopping, try again when it has stopped, "
                     "else check that it is running")
    with response:
        return _relay(response, where)


def _relay(response: Any, where: str) -> int:
    code: int | None = None
    try:
        for raw in response:
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return _fail(f"{where} sent something that is not a CLI answer: {raw[:80]!r}")
            if "out" in item:
                sys.stdout.write(item["out"])
                sys.stdout.flush()
            elif "err" in item:
                sys.stderr.write(item["err"])
                sys.stderr.flush()
            elif "exit" in item:
                code = int(item["exit"])
    except (http.client.HTTPException, OSError) as exc:
        return _fail(f"lost the connection to {where} before the command ended: {exc}")
    if code is None:
        return _fail(f"{where} ended the answer before the command's exit status (did the server stop?)")
    return code


def _refused(exc: urllib.error.HTTPError, where: str) -> int:
    try:
        error = orjson.loads(exc.read() or b"{}").get("error") or {}
    except (orjson.JSONDecodeError, AttributeError, OSError):
        error = {}
    message = " ".join(str(error.get("message") or exc.reason).split())
    if exc.code == 401:
        return _fail(f"{where} needs an admin key for the CLI (401 {error.get('code') or 'unauthorized'}); {KEY_HINT}")
    if exc.code == 403:
        return _fail(f"{where} refused the CLI (403 {error.get('code') or 'forbidden'}): {message}")
    if exc.code == 404:
        return _fail(f"{where} does not run CLI commands (404): it is an older Protege; stop it to use the CLI here")
    return _fail(message if exc.code == 400 else f"{where} answered {exc.code}: {message}")


def _fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 1
