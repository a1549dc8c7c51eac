"""SIGTERM under load: in-flight requests finish and every answered request is in the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx

from protege.store import Store
from protege.store.completions import count
from tests.fixtures.http import free_port as _free_port, wait_healthy
from tests.fixtures.stores import stored_bytes

KEY = "sk-shutdown-secret-777"



def test_sigterm_under_load_loses_no_capture(tmp_path, fake_openai, make_db):
    from tests.fakes.openai_upstream import start_fake_openai

    slow = start_fake_openai(delay=0.05)
    db = make_db("serve")
    port = _free_port()
    env = dict(os.environ, PROTEGE_LOG_LEVEL="DEBUG")
    env.pop("OPENAI_API_KEY", None)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "protege", "--db", db, "--data-dir", str(tmp_path / "serve-data"), "serve", "--port", str(port), "--upstream", slow.base_url],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(Path(__file__).resolve().parent.parent),
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, log_path)

        answered = []
        stop = threading.Event()

        def worker(n: int) -> None:
            with httpx.Client(timeout=10) as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        r = c.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                   json={"model": "m", "stream": i % 2 == 0, "messages": [{"role": "user", "content": f"w{n} r{i}"}]})
                        if r.status_code == 200:
                            r.read()
                            answered.append(r)
                    except httpx.TransportError:
                        if proc.poll() is not None:
                            return
                        time.sleep(0.01)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit too
        assert proc.wait(30) in (0, -signal.SIGTERM), log_path.read_text()
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        slow.stop()
    assert len(answered) > 20
    store = Store(db, data_dir=tmp_path / "serve-data", read_only=True)
    try:
        rows = count(store)
        assert rows >= len(answered), (rows, len(answered))
    finally:
        store.close()
    assert KEY.encode() not in stored_bytes(db)
    assert KEY not in log_path.read_text()
