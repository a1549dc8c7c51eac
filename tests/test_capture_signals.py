"""Captures when the process is stopped or killed, on a normal and on a really slow disk.

``protege serve`` runs as a subprocess under load from threads that each send unique messages and
note when each answer arrived; after SIGTERM or SIGKILL the store is opened again (which loads
what the journal kept) and every answered message is looked for in it.

The slow disk is real: an ext4 image on a loop device, written through a blkio cgroup that
throttles the proxy process's writes to it (``blkio.throttle.write_bps_device`` and
``write_iops_device``; cgroup v1, root). Where that is not possible the slow-disk tests skip.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from protege.store import CaptureWriter, Store, iter_records
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.http import free_port as _free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-signals-test"
CGROUP = Path("/sys/fs/cgroup/blkio")



@contextlib.contextmanager
def slow_disk(tmp: Path, write_bps: int, write_iops: int):
    """A mounted ext4 loop device and a cgroup whose members write to it at most this fast."""
    if os.geteuid() != 0 or not (CGROUP / "cgroup.procs").exists():
        pytest.skip("a throttled disk needs root and the cgroup v1 blkio controller")
    image, mnt = tmp / "slow.img", tmp / "slow"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "512M", str(image)], check=True)
    if subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True).returncode != 0:
        pytest.skip("mkfs.ext4 is not available")
    dev = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if dev.returncode != 0:
        pytest.skip(f"no loop device: {dev.stderr.strip()}")
    loop = dev.stdout.strip()
    group = CGROUP / f"protege-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        if subprocess.run(["mount", loop, str(mnt)], capture_output=True).returncode != 0:
            pytest.skip("cannot mount a loop device here")
        group.mkdir()
        st = os.stat(loop)
        majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        (group / "blkio.throttle.write_bps_device").write_text(f"{majmin} {write_bps}")
        (group / "blkio.throttle.write_iops_device").write_text(f"{majmin} {write_iops}")
        yield mnt, group
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)
        with contextlib.suppress(OSError):
            group.rmdir()


class Serve:
    def __init__(self, tmp: Path, db: str, data_dir: Path, upstream: str, env: dict[str, str], cgroup: Path | None = None) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{self.port}.log"
        full_env = dict(os.environ, **env)
        full_env.pop("OPENAI_API_KEY", None)

        if cgroup is not None:  # the schema is created unthrottled: the test is about captures, not migrations
            Store(db, data_dir=data_dir).close()

        def enter_cgroup() -> None:
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "protege", "--db", db, "--data-dir", str(data_dir), "serve", "--port", str(self.port),
                 "--upstream", upstream],
                stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT), preexec_fn=enter_cgroup,
            )
        try:
            wait_healthy(self.base, self.proc, self.log_path)
        except AssertionError:
            self.kill()  # never leave a proxy behind holding the test's disk
            raise

    def depth(self) -> int:
        text = httpx.get(self.base + "/metrics", timeout=5).text
        return int(next(line.split()[1] for line in text.splitlines() if line.startswith("protege_capture_queue_depth ")))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Load:
    """Threads sending unique chat requests; ``answered`` maps each message to when its answer came."""

    def __init__(self, base: str, threads: int = 8, content_bytes: int = 0) -> None:
        self.base = base
        self.answered: dict[str, float] = {}
        self.stop = threading.Event()
        self.pad = "x" * content_bytes
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=30) as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                text = f"w{n} r{i} {self.pad}"
                try:
                    r = c.post(self.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                               json={"model": "m", "stream": i % 2 == 0, "messages": [{"role": "user", "content": text}]})
                    if r.status_code == 200:
                        r.read()
                        self.answered[text] = time.monotonic()
                except httpx.TransportError:
                    if self.stop.is_set():
                        return
                    time.sleep(0.01)

    def wait_for(self, answered: int, *, at_least: float, timeout: float = 60.0) -> None:
        """Let the load run ``at_least`` seconds and until ``answered`` answers have come back (a
        loaded machine answers more slowly: the test's precondition must not depend on its speed)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if time.monotonic() - start >= at_least and len(self.answered) > answered:
                return
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def stored_messages(db: str, data_dir: Path) -> set[str]:
    """Open the store as the next start would (the journal and spool are loaded), then read it."""
    store = Store(db, data_dir=data_dir)
    CaptureWriter(store).start().close()
    try:
        return {orjson.loads(r["request"])["messages"][-1]["content"] for r in iter_records(store)}
    finally:
        store.close()


# The slow disk: bandwidth enough for the journal's appends, too few writes per second for the
# database's commits and checkpoints, so its inserts fall far behind under this load.
SLOW_BPS, SLOW_IOPS, PROMPT = 2 * 1024 * 1024, 40, 4096


@pytest.fixture
def upstream():
    fake = start_fake_openai(delay=0.005)
    yield fake
    fake.stop()


def _sigkill_window(tmp_path: Path, upstream, db: str, data_dir: Path, cgroup: Path | None, flush: float, margin: float,
                    pad: int) -> tuple[int, int, int]:
    srv = Serve(tmp_path, db, data_dir, upstream.base_url, {"PROTEGE_FLUSH_INTERVAL": str(flush)}, cgroup)
    load = Load(srv.base, content_bytes=pad)
    try:
        load.wait_for(200, at_least=3.0)
        depth = srv.depth()
        t_kill = time.monotonic()
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
    finally:
        load.finish()
        srv.kill()
    stored = stored_messages(db, data_dir)
    answered = dict(load.answered)
    missing = {m: t for m, t in answered.items() if m not in stored}
    # Lost at most: what was answered within the last flush interval (plus one journal write).
    late = {m: round(t_kill - t, 3) for m, t in missing.items() if t < t_kill - (flush + margin)}
    assert not late, f"lost captures answered long before the kill: {list(late.values())[:10]}"
    assert len(answered) > 200
    print(f"SIGKILL: answered {len(answered)}, stored {len(answered) - len(missing)}, lost {len(missing)}, queue at the kill {depth}")
    return len(answered), len(missing), depth


def test_sigkill_loses_at_most_the_flush_window(tmp_path, upstream, make_db):
    answered, missing, _ = _sigkill_window(tmp_path, upstream, make_db("kill"), tmp_path / "kill-data", None, 0.2, 0.5, 0)
    assert missing < answered / 4


# The throttled disk is the one under the DuckDB file, whose inserts fall behind; a PostgreSQL
# database that falls behind is tests/test_store_postgres.py::test_a_stuck_database_never_holds_up_the_journal.
@pytest.mark.backends("duckdb")
def test_sigkill_on_a_slow_disk_loses_at_most_the_flush_window(tmp_path, upstream, backend):
    # The database's inserts fall behind, so the queue is long when the kill comes; the journal keeps up.
    # The margin is "one journal write" on this device: throttled to SLOW_IOPS writes/s, the journal's
    # fdatasync queues behind DuckDB's own writes, which took up to ~1.4 s in runs here (1.0 s failed
    # 2 of 6 full runs). What tells this writer from the old one is the next line: the old writer lost
    # the whole queue.
    with slow_disk(tmp_path, SLOW_BPS, SLOW_IOPS) as (mnt, group):
        answered, missing, depth = _sigkill_window(tmp_path, upstream, str(mnt / "slow.duckdb"), mnt / "slow-data", group, 0.2, 2.0, PROMPT)
    assert depth > missing  # the old writer lost the whole queue; this one loses the last window


# The throttled disk is the one under the DuckDB file (a PostgreSQL replica's would hold only its
# journal: run here, it passed in 24 s); SIGTERM under load on PostgreSQL, every answered capture
# stored, is tests/test_proxy_shutdown.py::test_sigterm_under_load_loses_no_capture[postgresql].
@pytest.mark.backends("duckdb")
def test_sigterm_on_a_slow_disk_drains_within_the_time_limit_and_keeps_everything(tmp_path, upstream, backend):
    with slow_disk(tmp_path, SLOW_BPS, SLOW_IOPS) as (mnt, group):
        db, data_dir = str(mnt / "term.duckdb"), mnt / "term-data"
        srv = Serve(tmp_path, db, data_dir, upstream.base_url, {"PROTEGE_DRAIN_TIMEOUT": "2"}, group)
        load = Load(srv.base, content_bytes=PROMPT)
        try:
            load.wait_for(100, at_least=5.0)
            depth = srv.depth()
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            code = srv.proc.wait(60)
            took = time.monotonic() - t0
        finally:
            load.finish()
            srv.kill()
        assert code in (0, -signal.SIGTERM), srv.log_path.read_text()
        # drain_timeout (2 s), the last journal write, and the kernel finishing writes already
        # queued on the throttled device: well under the common 30 s stop timeout.
        assert took < 20, (took, srv.log_path.read_text()[-2000:])
        stored = stored_messages(db, data_dir)
    answered = set(load.answered)
    print(f"SIGTERM: answered {len(answered)}, stored {len(answered & stored)}, queue at the signal {depth}, exit after {took:.1f} s")
    assert len(answered) > 100 and depth > 0
    assert not answered - stored, f"{len(answered - stored)} of {len(answered)} answered captures lost"
