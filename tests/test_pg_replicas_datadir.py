"""Two capture writers on one journal directory (store/dirlock.py): the second is refused at
start-up, so it never replays (and deletes) the journal segment the first is writing.

- two real ``protege serve`` processes on one PostgreSQL database, started in one directory with no
  ``--data-dir`` (both default to ./protege-data): the second exits non-zero with one line naming the
  directory, the first's PID and the fix; the first keeps serving and storing;
- in process, on either backend: two CaptureWriters on one directory, the second refused until the
  first has closed, the first's open segment untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import openai
import pytest
from protege.store import CaptureWriter, JournalInUseError, Store, count, get_record

from tests import postgres
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.beside import clean_env
from tests.fixtures.http import free_port, wait_healthy
from tests.fixtures.stores import store_record


class Cap:
    def __init__(self, i: int) -> None:
        self.i = i

    def to_record(self) -> dict:
        return store_record(self.i)


def test_a_second_writer_on_one_directory_is_refused(store_db, tmp_path):
    store = Store(store_db, data_dir=tmp_path / "data")
    first = CaptureWriter(store, flush_interval=0.01).start()
    first.submit(Cap(1))
    assert first.flush(10)
    segments = [p for _, p in first.journal.segments()]
    assert segments  # the first writer's open segment

    second = CaptureWriter(store, flush_interval=0.01)
    with pytest.raises(JournalInUseError) as refused:
        second.start()
    message = str(refused.value)
    assert str(tmp_path / "data" / "capture-journal") in message and f"PID {os.getpid()}" in message
    assert "--data-dir" in message and "\n" not in message
    assert [p for _, p in first.journal.segments()] == segments and all(p.exists() for p in segments)

    first.submit(Cap(2))  # the first goes on writing to its own segment, and the rows arrive
    assert first.flush(10) and count(store) == 2 and get_record(store, "chatcmpl-2") is not None
    assert first.close()
    second.start()  # free once the first has closed
    second.submit(Cap(3))
    assert second.flush(10) and count(store) == 3
    assert second.close()
    store.close()


@pytest.mark.skipif(not postgres.available(), reason="no PostgreSQL server binaries")
def test_two_servers_in_one_directory(postgres_server, tmp_path):
    upstream = start_fake_openai()
    url = postgres_server.database()
    env = clean_env()

    def serve(name: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child, closed here after
        # no --data-dir: both take ./protege-data in their working directory, the same one here
        proc = subprocess.Popen([sys.executable, "-m", "protege", "--db", url, "serve", "--port", str(port),
                                 "--upstream", upstream.base_url], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=log)
        log.close()
        return proc, f"http://127.0.0.1:{port}"

    first, first_url = serve("first")
    try:
        wait_healthy(first_url, first, tmp_path / "first.log")
        second, _ = serve("second")
        assert second.wait(90) != 0
        err = (tmp_path / "second.log").read_text()
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert str(tmp_path / "protege-data" / "capture-journal") in err and f"PID {first.pid}" in err
        assert "--data-dir" in err
        assert first.poll() is None  # the first keeps serving, and what it answers is stored
        client = openai.OpenAI(base_url=first_url + "/v1", api_key="sk-client", max_retries=0, timeout=20)
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], store=True)
        assert client.chat.completions.retrieve(r.id).id == r.id
    finally:
        first.terminate()
        first.wait(40)
        upstream.stop()
    pg = Store(url, read_only=True)
    assert count(pg) == 1
    pg.close()
