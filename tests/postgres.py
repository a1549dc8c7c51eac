"""A real, throw-away PostgreSQL server for tests (initdb + pg_ctl on 127.0.0.1, ephemeral port).

The server binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<v>/bin``)
or the PATH. initdb refuses to run as root, so as root the cluster belongs to ``nobody`` and every
server command runs under ``setpriv`` as that user; the data directory is a temporary directory
removed at the end. Durability is switched off (``fsync``, ``synchronous_commit``,
``full_page_writes``): the data is thrown away, and the tests measure behaviour, not disks.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "protege"


def find_bin(name: str) -> str | None:
    """A PostgreSQL server binary, the newest Debian one first, then the PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    return shutil.which(name)


def available() -> bool:
    return all(find_bin(name) for name in ("initdb", "pg_ctl", "postgres"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One cluster in a temporary directory; :meth:`database` makes a fresh database for a test."""

    def __init__(self) -> None:
        root = os.geteuid() == 0
        # As root, under /tmp (world-traversable) whatever TMPDIR says: nobody must reach the directory.
        self.root = Path(tempfile.mkdtemp(prefix="protege-pg-", dir="/tmp" if root else None))
        self.data = self.root / "data"
        self._prefix: list[str] = []
        if root:  # initdb and postgres refuse root: run them as nobody
            user = pwd.getpwnam("nobody")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        self._run([find_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                   "--locale=C", "--no-sync", "--no-instructions"])
        self.port = 0
        self._databases = 0
        for _ in range(5):  # another process may take the free port before the server binds it
            self.port = _free_port()
            if self._start():
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start: {(self.root / 'log').read_text()[-2000:]}")
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}"

    def _start(self) -> bool:
        opts = (f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200")
        proc = self._run([find_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                          "-t", "30", "-o", opts, "start"], check=False)
        return proc.returncode == 0

    def pause(self) -> None:
        """Stop the server (fast shutdown: connections are cut), keeping its data."""
        self._run([find_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def resume(self) -> None:
        """Start it again on the same port."""
        if not self._start():
            raise RuntimeError(f"PostgreSQL did not restart: {(self.root / 'log').read_text()[-2000:]}")

    def _run(self, cmd: list[str | None], check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, HOME=str(self.root), LC_ALL="C")
        proc = subprocess.run(self._prefix + [str(c) for c in cmd], cwd=self.root, env=env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.strip()[-2000:]}")
        return proc

    def database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.url + "/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY")
        return f"{self.url}/{name}"

    def stop(self) -> None:
        self._run([find_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
