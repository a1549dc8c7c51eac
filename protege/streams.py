"""sys.stdout and sys.stderr that one context can redirect without touching the rest of the process.

A CLI command run inside ``protege serve`` (protege/cli_api.py) prints with ``typer.echo``,
``sys.stdout.write`` and Rich, all of which look up ``sys.stdout`` / ``sys.stderr`` when they
write. Replacing those globals for the command would also capture what every other thread of the
server prints. So they are replaced once by :class:`_Dispatch` objects that send a write to the
sink of the *current context* (a ``contextvars.ContextVar``: set for the command's thread, and
inherited by ``asyncio`` tasks and ``asyncio.to_thread`` work it starts) and to the real stream
everywhere else. Logging handlers keep the stream objects they were created with, so the
server's own log never goes to a client.
"""

from __future__ import annotations

import contextvars
import io
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

# (stdout sink, stderr sink): each receives the text of one write call.
Sink = Callable[[str], None]
_sinks: contextvars.ContextVar[tuple[Sink, Sink] | None] = contextvars.ContextVar("protege_cli_sinks", default=None)
_install_lock = threading.Lock()


class _Dispatch(io.TextIOBase):
    """A text stream that writes to this context's sink, else to the process's real stream."""

    def __init__(self, real: Any, which: int) -> None:
        self._real = real
        self._which = which

    def _sink(self) -> Sink | None:
        sinks = _sinks.get()
        return None if sinks is None else sinks[self._which]

    def write(self, text: str) -> int:  # type: ignore[override]
        if not isinstance(text, str):  # click probes text streams with write(b"")
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        sink = self._sink()
        if sink is None:
            return self._real.write(text)
        if text:
            sink(text)
        return len(text)

    def flush(self) -> None:
        if self._sink() is None:
            self._real.flush()

    def isatty(self) -> bool:
        # A captured command writes to a pipe (the HTTP answer), as a CLI run with its output piped.
        return False if self._sink() is not None else self._real.isatty()

    def fileno(self) -> int:
        if self._sink() is not None:
            raise io.UnsupportedOperation("a captured CLI stream has no file descriptor")
        return self._real.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8" if self._sink() is not None else getattr(self._real, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "strict" if self._sink() is not None else getattr(self._real, "errors", None)

    @property
    def buffer(self) -> Any:
        if self._sink() is not None:
            return _Bytes(self)
        return self._real.buffer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _Bytes:
    """``sys.stdout.buffer`` of a captured stream: bytes are decoded as UTF-8 and sent on."""

    def __init__(self, text: _Dispatch) -> None:
        self._text = text

    def write(self, data: bytes) -> int:
        self._text.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        pass


def install() -> None:
    """Replace sys.stdout/sys.stderr by dispatchers (once per process; idempotent)."""
    with _install_lock:
        if not isinstance(sys.stdout, _Dispatch):
            sys.stdout = _Dispatch(sys.stdout, 0)  # type: ignore[assignment]
        if not isinstance(sys.stderr, _Dispatch):
            sys.stderr = _Dispatch(sys.stderr, 1)  # type: ignore[assignment]


@contextmanager
def captured(out: Sink, err: Sink) -> Iterator[None]:
    """Within this context (and what it starts), stdout goes to ``out`` and stderr to ``err``."""
    install()
    token = _sinks.set((out, err))
    try:
        yield
    finally:
        _sinks.reset(token)
