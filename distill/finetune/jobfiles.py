"""The files through which a LoRA job process and the server talk (the process cannot open DuckDB).

A job directory (``<data dir>/finetune/<ftjob id>/``) holds:

- ``spec.json``      what to train (written once by the backend, read by the process)
- ``process.json``   pid, process group and attempt of the latest launch (backend)
- ``status.json``    status, step, loss, ETA, error, result (process; replaced atomically)
- ``events.jsonl``   one event per line with a stable id (process; appended, a restart continues the count)
- ``cancel``         present once cancellation was asked for (backend)
- ``checkpoints/``   Trainer checkpoints, for resuming a killed process
- ``output/``        the finished student before it becomes ``students/<name>/v<N>/``
- ``finalized.json`` the recorded student version (backend, once)

Only plain JSON and os calls here: both sides import it, the server without torch.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

SPEC = "spec.json"
PROCESS = "process.json"
STATUS = "status.json"
EVENTS = "events.jsonl"
CANCEL = "cancel"
CHECKPOINTS = "checkpoints"
OUTPUT = "output"
FINALIZED = "finalized.json"
LOG = "process.log"


def write_json(path: Path, obj: Any) -> None:
    """Atomic replace: a reader sees the old or the new file, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return default


class EventLog:
    """Append-only events with ids ``ftevent_lora_<job>_<n>``; n continues across restarts."""

    def __init__(self, job_dir: Path, job_key: str) -> None:
        self.path = Path(job_dir) / EVENTS
        self.job_key = job_key
        self.count = len(read_events(job_dir))

    def add(self, message: str, *, level: str = "info", type_: str = "message", data: Any = None) -> dict[str, Any]:
        self.count += 1
        event = {
            "id": f"ftevent_lora_{self.job_key}_{self.count:05d}",
            "created_at": int(time.time()),
            "level": level,
            "type": type_,
            "message": message,
            "data": data,
        }
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, ensure_ascii=False) + "\n")
            fh.flush()
        return event


def read_events(job_dir: Path) -> list[dict[str, Any]]:
    """Complete lines only (a line being written when the process was killed is skipped)."""
    out = []
    try:
        with open(Path(job_dir) / EVENTS, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out


def last_checkpoint(job_dir: Path) -> Path | None:
    """The newest COMPLETE Trainer checkpoint: Trainer writes ``trainer_state.json`` last and not
    atomically, so a process killed while saving leaves a directory without a readable one."""
    found = []
    for p in (Path(job_dir) / CHECKPOINTS).glob("checkpoint-*"):
        step = p.name.rsplit("-", 1)[-1]
        if step.isdigit() and isinstance(read_json(p / "trainer_state.json"), dict):
            found.append((int(step), p))
    return max(found)[1] if found else None


def process_alive(job_dir: Path) -> bool:
    """Is the latest launched process of this job still running (not a zombie, not a reused pid)?"""
    info = read_json(Path(job_dir) / PROCESS) or {}
    pid = info.get("pid")
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return str(Path(job_dir).resolve()) in cmdline
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_group(job_dir: Path, sig: int = signal.SIGTERM) -> bool:
    """Signal the job's process group (the trainer and anything it started, e.g. accelerate's ranks)."""
    info = read_json(Path(job_dir) / PROCESS) or {}
    pgid = info.get("pgid") or info.get("pid")
    if not pgid or not process_alive(job_dir):
        return False
    try:
        os.killpg(int(pgid), sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


__all__ = [
    "CANCEL", "CHECKPOINTS", "EVENTS", "EventLog", "FINALIZED", "LOG", "OUTPUT", "PROCESS", "SPEC", "STATUS",
    "last_checkpoint", "process_alive", "read_events", "read_json", "signal_group", "write_json",
]
