"""protege/streams.py: one context's output is captured; the rest of the process (other threads,
the server's log handlers) writes where it always did."""

from __future__ import annotations

import io
import logging
import threading

import typer

from protege import streams


def test_only_the_captured_context_is_redirected(monkeypatch):
    real_out, real_err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", real_out)
    monkeypatch.setattr("sys.stderr", real_err)
    # a log handler made before the command ran, as the server's are
    log = logging.getLogger("test.cli_streams")
    handler = logging.StreamHandler(real_err)
    log.addHandler(handler)
    log.propagate = False
    try:
        streams.install()
        got: list[tuple[str, str]] = []
        inside, outside_done = threading.Event(), threading.Event()

        def command() -> None:
            with streams.captured(lambda t: got.append(("out", t)), lambda t: got.append(("err", t))):
                typer.echo("command output")
                inside.set()
                outside_done.wait(5)
                typer.echo("command error", err=True)
                log.warning("logged by the command")

        def other() -> None:
            inside.wait(5)
            typer.echo("another request's print")
            log.warning("the server's log line")
            outside_done.set()

        threads = [threading.Thread(target=command), threading.Thread(target=other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        log.removeHandler(handler)
    assert got == [("out", "command output\n"), ("err", "command error\n")]
    assert real_out.getvalue() == "another request's print\n"
    assert real_err.getvalue() == "the server's log line\nlogged by the command\n"
