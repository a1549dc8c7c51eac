"""``POST /protege/v1/cli``: run one ``protege`` command inside the server, against its own store.

While ``protege serve`` holds the DuckDB file no other process may open it, so the CLI sends its
command here instead (protege/remote.py) and prints what comes back. The command is Protege's own
click tree (``protege.cli.command()``, never a shell), run in a worker thread, never on the event
loop, with:

- the server's settings and store (``clikit.served_by``: ``open_cli_store()`` lends the server's
  Store, whose ``close()`` does nothing);
- its stdout/stderr captured for this command's context only (protege/streams.py), streamed back
  as NDJSON lines ``{"out": "..."}`` / ``{"err": "..."}`` as they are written, then ``{"exit": N}``;
- relative path arguments resolved against the caller's ``cwd`` (protege/cli_tree.py), and shown
  in the output as the caller typed them, so the output is the output of a local run;
- help formatted at the caller's terminal width (``columns``).

One command runs at a time (a lock; a second waits, with one line on stderr saying for what):
the commands were written for a process of their own. A caller that goes away (Ctrl-C, a killed
CLI) interrupts its command as Ctrl-C interrupts a local one (KeyboardInterrupt in its thread), so
an abandoned ``--wait`` never holds the lock. ``serve`` and ``worker`` are refused
(they would start a second server or loop inside this one). With no key configured, only a
client on this machine may use it: the endpoint writes files wherever the caller names.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
import time
from typing import Any, AsyncIterator

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from protege import apikit, clikit, streams

log = logging.getLogger("protege.cli_api")

router = APIRouter()

REFUSED = {
    "serve": "`protege serve` cannot run inside the server that holds {db}: it is already served",
    "worker": "`protege worker` cannot run inside the server that holds {db}: restart it as `protege serve --worker`, "
              "or stop the server and run the worker alone",
}

_lock = threading.Lock()
_running: dict[str, Any] = {}


@router.post("/protege/v1/cli", dependencies=[apikit.admin_only("The CLI endpoint")])
async def run_cli(request: Request) -> StreamingResponse:
    """Run ``argv`` (what follows ``protege``) as the CLI would, streaming its output as NDJSON."""
    settings = getattr(request.app.state, "protege_settings", None)
    store = await apikit.store(request)
    _check_local_when_open(request, settings)
    body = await apikit.json_object(request)
    argv, cwd, columns = _parse(body)
    from protege import cli, cli_tree

    root = cli.command()
    path = cli_tree.command_path(root, argv)
    top = path.split(" ", 1)[0] if path else ""
    if top in REFUSED:
        raise apikit.error(400, REFUSED[top].format(db=settings.db), param="argv", code="command_not_allowed_remotely")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def emit(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the server stopped: nobody is reading any more
            pass

    call = _Call()
    thread = threading.Thread(
        target=_run, args=(root, argv, cwd, columns, settings, store, emit, path, call), name="protege-cli", daemon=True
    )
    thread.start()
    return StreamingResponse(_stream(queue, call), media_type="application/x-ndjson")


class _Call:
    """One remote command's thread, interruptible while (and only while) the command runs."""

    def __init__(self) -> None:
        self._state = threading.Lock()
        self._thread_id: int | None = None
        self.gone = False

    def started(self) -> None:
        with self._state:
            self._thread_id = threading.get_ident()
        if self.gone:  # the caller left while the command waited for the lock
            raise KeyboardInterrupt

    def ended(self) -> None:
        with self._state:
            tid, self._thread_id = self._thread_id, None
            if tid is not None:  # an interrupt set but not yet delivered must not land after the command
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)

    def interrupt(self) -> None:
        """The caller went away: Ctrl-C for the command's thread."""
        with self._state:
            self.gone = True
            if self._thread_id is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(KeyboardInterrupt))


def _check_local_when_open(request: Request, settings: Any) -> None:
    if getattr(settings, "proxy_keys", None) or getattr(settings, "admin_keys", None):
        return  # admin_only checked the key
    from .startup import is_loopback

    host = request.client.host if request.client else ""
    if not is_loopback(host):
        raise apikit.error(
            403, "The CLI endpoint of a server with no keys answers clients on its own machine only; "
            "set admin_keys to use it from elsewhere.", type_="permission_error", code="cli_local_only",
        )


def _parse(body: dict[str, Any]) -> tuple[list[str], str, int]:
    argv = body.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise apikit.error(400, "'argv' must be a list of strings (the arguments after `protege`).", param="argv",
                           code="invalid_type")
    cwd = body.get("cwd")
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise apikit.error(400, "'cwd' must be an absolute directory (relative paths in argv are taken from it).",
                           param="cwd", code="invalid_value")
    columns = body.get("columns", 80)
    if not isinstance(columns, int) or isinstance(columns, bool) or not 20 <= columns <= 1000:
        raise apikit.error(400, "'columns' must be an integer from 20 to 1000 (the caller's terminal width).",
                           param="columns", code="invalid_value")
    return argv, cwd, columns


async def _stream(queue: asyncio.Queue[tuple[str, Any]], call: _Call) -> AsyncIterator[bytes]:
    """NDJSON lines as output arrives; consecutive chunks of one stream go out as one line. When
    the client disconnects, Starlette cancels this generator: the command is interrupted."""
    done = False
    try:
        while not done:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            lines: list[bytes] = []
            for kind, value in items:
                if kind == "exit":
                    done = True
                lines.append(orjson.dumps({kind: value}))
            yield b"\n".join(lines) + b"\n"
    finally:
        if not done:
            call.interrupt()


def _run(root: Any, argv: list[str], cwd: str, columns: int, settings: Any, store: Any, emit: Any, path: str, call: _Call) -> None:
    """The worker thread: wait for the lock, run the command captured, report its exit code."""
    from protege import cli, cli_tree

    if not _lock.acquire(blocking=False):
        other = dict(_running)
        emit("err", f"note: waiting for `protege {other.get('path', '')}` (running in the server for "
                    f"{time.monotonic() - other.get('since', time.monotonic()):.0f} s) to finish\n")
        _lock.acquire()
    _running.update(path=path, since=time.monotonic())
    code = 1
    try:
        with cli_tree.caller_paths(cwd) as shown:
            def sink(kind: str):  # noqa: ANN202
                def write(text: str) -> None:
                    for absolute, typed in shown.items():
                        text = text.replace(absolute, typed)
                    emit(kind, text)
                return write

            with clikit.served_by(settings, store), streams.captured(sink("out"), sink("err")):
                try:
                    call.started()
                    code = _invoke(root, argv, columns, cli.PROG)
                except KeyboardInterrupt:  # the caller went away
                    code = 130
                finally:
                    call.ended()
                if call.gone:
                    log.info("the caller of `protege %s` went away: the command was interrupted (exit %d)", path, code)
    except BaseException:  # noqa: BLE001 - the client still gets an exit status
        log.exception("CLI command failed inside the server: protege %s", path)
    finally:
        _running.clear()
        _lock.release()
        emit("exit", code)


def _invoke(root: Any, argv: list[str], columns: int, prog: str) -> int:
    """Run the click tree as ``main()`` does; an exit status whatever the command does."""
    import sys

    from protege import cli_tree

    try:
        root.main(argv, prog_name=prog, terminal_width=cli_tree.help_width(columns))
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except clikit.ServedElsewhere:  # not reachable: inside the server the store is lent
        sys.stderr.write("error: the store is not lent to this command\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the caller, the traceback in the server's log
        log.exception("protege %s failed inside the server", " ".join(argv))
        sys.stderr.write(f"error: internal error: {type(exc).__name__}: {exc} (the server's log has the traceback)\n")
        return 1
    return 0
