"""The ``lora`` fine-tune backend: LoRA students of open-weight chat models, trained on this machine.

``start`` writes the job's spec into ``<data dir>/finetune/<ftjob id>/`` and launches the job
process (:mod:`.worker`) in a new process group with its threads capped, then returns at once.
``status``/``events`` read the files that process writes, so the job runner, ``finetune status``
and the HTTP API work the same as for cloud jobs; nothing here imports torch.

A job whose process died without a final status (killed, OOM, machine restart) is launched again
when it is next looked at and resumes from its last Trainer checkpoint (at most
``MAX_RESTARTS`` times). ``cancel`` marks the job and signals its process group.

When the process reports success, the student is recorded (once, under a file lock): its files
move to ``students/<name>/v<N>/`` beside a ``manifest.json`` (the shared contract with serving),
and the store gets the manifest's path (relative to the data directory) and sha256.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from protege.store import jobs as store_jobs

from protege.distill.finetune.interface import BackendStatus, FineTuneError, JobSpec, StartResult
from protege.distill.finetune import jobfiles
from protege.distill.finetune.jobfiles import read_json, write_json
from protege.distill.finetune import base as base_mod
from protege.store import datasets as store_datasets

log = logging.getLogger("protege.distill.finetune.lora")

MAX_RESTARTS = 3
CANCEL_GRACE_S = 5.0
TERMINAL = ("succeeded", "failed", "cancelled")


def default_threads() -> int:
    """Leave one core to a co-located proxy."""
    return max(1, (os.cpu_count() or 2) - 1)


class LoraBackend:
    """See the module docstring. ``threads`` caps torch/OpenMP threads of each job process."""

    name = "lora"

    def __init__(self, store, *, threads: int | None = None, python: str | None = None, env: dict[str, str] | None = None) -> None:
        self.store = store
        self.threads = int(threads) if threads else default_threads()
        self.python = python or sys.executable
        self.extra_env = dict(env or {})
        self._procs: dict[str, subprocess.Popen] = {}

    # --- paths ---------------------------------------------------------------------------------

    def job_dir(self, provider_job_id: str) -> Path:
        key = provider_job_id.removeprefix("lora-")
        if not key or "/" in key or key.startswith("."):
            raise FineTuneError(f"not a lora job id: {provider_job_id}", param="id", code="job_not_found", status=404)
        return Path(self.store.data_dir) / "finetune" / key

    # --- start ---------------------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        """A missing GGUF file or a directory that holds no model: refused before a job is recorded."""
        if not model:
            raise FineTuneError("the lora backend needs a base model: a Hugging Face id, a local model directory or a .gguf file", param="model")
        kind = base_mod.kind(model)
        if kind == "gguf" and not Path(model).expanduser().is_file():
            raise FineTuneError(f"base model file {model} does not exist", param="model", code="model_not_found")
        if kind == "dir" and not (Path(model).expanduser() / "config.json").is_file():
            raise FineTuneError(f"{model} is not a model directory (no config.json)", param="model", code="model_not_found")

    def start(self, spec: JobSpec) -> StartResult:
        job_dir = self.prepare(spec)
        with _locked(job_dir):  # a poller's _resume waits for this launch instead of making a second
            self._launch(job_dir, attempt=1)
        return StartResult(provider_job_id=f"lora-{job_dir.name}", status="validating_files")

    def prepare(self, spec: JobSpec) -> Path:
        """Check the request and write the job directory (spec, first status and event); no process yet."""
        from protege.distill.finetune.local_student import check_name

        if spec.method not in ("supervised", "dpo"):
            raise FineTuneError("the lora backend trains method 'supervised' or 'dpo'", param="method")
        name = check_name(spec.name or spec.suffix or "student")
        self.check_model(spec.model)
        job_id = spec.job_id or store_jobs.new_id("ftjob_")
        job_dir = self.store.artifact_dir("finetune", job_id)
        dataset = self._dataset_info(job_id, spec)
        write_json(
            job_dir / jobfiles.SPEC,
            {
                "job_id": job_id,
                "job_key": job_id.removeprefix("ftjob_"),
                "name": name,
                "base_model": spec.model,
                "method": spec.method,
                "training_file": str(Path(spec.training_file).resolve()),
                "validation_file": str(Path(spec.validation_file).resolve()) if spec.validation_file else None,
                "hyperparameters": spec.hyperparameters,
                "seed": spec.seed,
                "data_dir": str(Path(self.store.data_dir).resolve()),
                "threads": self.threads,
                "dataset": dataset,
            },
        )
        # Before the status a poller reads: "being launched", so a poll before the launch does not
        # take the job for one whose process died (it would start a second one).
        write_json(job_dir / jobfiles.PROCESS, {"attempt": 0, "launching_at": time.time()})
        write_json(job_dir / jobfiles.STATUS, {"status": "validating_files", "updated_at": time.time()})
        jobfiles.EventLog(job_dir, job_id.removeprefix("ftjob_")).add(
            f"Starting the training process for protege/{name} on {spec.model} ({self.threads} threads)"
        )
        return job_dir

    def _dataset_info(self, job_id: str, spec: JobSpec) -> dict[str, Any]:
        info: dict[str, Any] = {
            "training_file": str(Path(spec.training_file).resolve()),
            "training_sha256": base_mod.sha256_file(Path(spec.training_file)),
            "validation_file": str(Path(spec.validation_file).resolve()) if spec.validation_file else None,
            "validation_sha256": base_mod.sha256_file(Path(spec.validation_file)) if spec.validation_file else None,
        }
        job = store_jobs.get_job(self.store, job_id) if spec.job_id else None
        if job and job.get("dataset_id"):
            row = store_datasets.get_dataset_row(self.store, job["dataset_id"])
            info.update({"id": job["dataset_id"], "name": getattr(row, "name", None), "version": getattr(row, "version", None)})
        return info

    def _launch(self, job_dir: Path, *, attempt: int) -> None:
        env = dict(os.environ)
        threads = str(self.threads)
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"})
        env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        env.update(self.extra_env)
        logfile = open(job_dir / jobfiles.LOG, "ab")
        try:
            proc = subprocess.Popen(
                [self.python, "-m", "protege.distill.finetune.worker", str(job_dir.resolve())],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: cancel signals the whole tree
                close_fds=True,
            )
        finally:
            logfile.close()
        self._procs[str(job_dir)] = proc
        write_json(job_dir / jobfiles.PROCESS, {"pid": proc.pid, "pgid": proc.pid, "attempt": attempt, "started_at": time.time()})

    # --- status --------------------------------------------------------------------------------

    def _reap(self, job_dir: Path) -> None:
        proc = self._procs.get(str(job_dir))
        if proc is not None and proc.poll() is not None:
            self._procs.pop(str(job_dir), None)

    def status(self, provider_job_id: str) -> BackendStatus:
        job_dir = self.job_dir(provider_job_id)
        if not (job_dir / jobfiles.SPEC).is_file():
            return BackendStatus(status="failed", error={"code": "job_not_found", "message": f"no job files in {job_dir}", "param": None})
        self._reap(job_dir)
        state = read_json(job_dir / jobfiles.STATUS) or {}
        status = state.get("status") or "validating_files"
        if (job_dir / jobfiles.CANCEL).exists() and status not in TERMINAL:
            if not jobfiles.process_alive(job_dir):
                status = "cancelled"
        if status not in TERMINAL and not (job_dir / jobfiles.CANCEL).exists() and not jobfiles.process_alive(job_dir):
            state, status = self._resume(job_dir, state)
        result = {k: state[k] for k in ("step", "total_steps", "train_loss", "eta_seconds") if state.get(k) is not None}
        if state.get("counts"):
            result["counts"] = state["counts"]
        if status == "succeeded":
            return self._finalise(job_dir, state, result)
        if status == "failed":
            return BackendStatus(status="failed", error=state.get("error") or {"code": "training_error", "message": "the training process failed", "param": None}, result=result)
        return BackendStatus(status=status if status in ("validating_files", "queued", "running", "cancelled") else "running", result=result)

    def _resume(self, job_dir: Path, state: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The process is gone without a final status: start it again (it resumes from its last
        checkpoint), or give up after MAX_RESTARTS."""
        with _locked(job_dir):
            state = read_json(job_dir / jobfiles.STATUS) or state
            status = state.get("status") or "validating_files"
            if status in TERMINAL or jobfiles.process_alive(job_dir):
                return state, status
            info = read_json(job_dir / jobfiles.PROCESS) or {}
            if info.get("attempt") == 0 and time.time() - float(info.get("launching_at") or 0) < LAUNCH_GRACE_S:
                return state, status  # prepared, its first launch is on its way
            attempt = max(int(info.get("attempt") or 1), 1)
            spec = read_json(job_dir / jobfiles.SPEC) or {}
            events = jobfiles.EventLog(job_dir, spec.get("job_key", "job"))
            if attempt > MAX_RESTARTS:
                message = f"the training process exited {attempt} times without finishing; see {job_dir / jobfiles.LOG}"
                events.add(message, level="error")
                state.update(status="failed", error={"code": "interrupted", "message": message, "param": None})
                write_json(job_dir / jobfiles.STATUS, state)
                return state, "failed"
            last = jobfiles.last_checkpoint(job_dir)
            where = f"resuming from {last.name}" if last else "no checkpoint yet, starting over"
            events.add(f"The training process exited before finishing (attempt {attempt}); restarting it, {where}", level="warn")
            self._launch(job_dir, attempt=attempt + 1)
            return state, status

    def _finalise(self, job_dir: Path, state: dict[str, Any], result: dict[str, Any]) -> BackendStatus:
        """Record the student version once; later polls read ``finalized.json``."""
        with _locked(job_dir):
            done = read_json(job_dir / jobfiles.FINALIZED)
            if done is None:
                done = self._record_student(job_dir, state)
                write_json(job_dir / jobfiles.FINALIZED, done)
        result.update({"student": done["student"], "metrics": done["metrics"], "tools": done.get("tools")})
        return BackendStatus(status="succeeded", fine_tuned_model=done["model"], result=result, hyperparameters=done.get("hyperparameters"))

    def _record_student(self, job_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
        spec = read_json(job_dir / jobfiles.SPEC) or {}
        res = dict(state.get("result") or {})
        name = spec["name"]
        version = store_jobs.next_student_version(self.store, name)
        folder = self.store.artifact_dir("students", name, f"v{version}")
        output = job_dir / jobfiles.OUTPUT
        for child in list(output.iterdir()):
            os.replace(child, folder / child.name)
        shutil.rmtree(output, ignore_errors=True)
        model = f"protege/{name}@v{version}"
        manifest = {
            "kind": "lora",
            "name": name,
            "version": version,
            "model": model,
            "created_at": int(time.time()),
            **res,
            "job_id": spec.get("job_id"),
        }
        manifest_path = folder / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        digest = base_mod.sha256_file(manifest_path)
        data_dir = Path(self.store.data_dir)
        rel = manifest_path.relative_to(data_dir).as_posix() if manifest_path.is_relative_to(data_dir) else str(manifest_path)
        row = store_jobs.record_student(
            self.store, name=name, version=version, path=rel, sha256=digest, manifest_path=rel, manifest=manifest, job_id=spec.get("job_id")
        )
        # Checkpoints were for resuming; the student is recorded now.
        shutil.rmtree(job_dir / jobfiles.CHECKPOINTS, ignore_errors=True)
        jobfiles.EventLog(job_dir, spec.get("job_key", "job")).add(f"New LoRA student created: {model}")
        return {
            "model": model,
            "student": {"name": name, "version": version, "path": rel, "sha256": digest, "manifest": rel, "id": row["id"]},
            "metrics": res.get("metrics") or {},
            "hyperparameters": res.get("hyperparameters"),
            "tools": res.get("tools"),
        }

    # --- events, cancel, checkpoints -----------------------------------------------------------

    def events(self, provider_job_id: str, known: set[str] | None = None) -> list[dict[str, Any]]:
        events = jobfiles.read_events(self.job_dir(provider_job_id))
        return [e for e in events if not known or e.get("id") not in known]

    def cancel(self, provider_job_id: str) -> BackendStatus:
        job_dir = self.job_dir(provider_job_id)
        state = read_json(job_dir / jobfiles.STATUS) or {}
        if state.get("status") in TERMINAL:
            raise FineTuneError(f"job has already completed ({state['status']})", code="job_completed")
        (job_dir / jobfiles.CANCEL).write_text(str(time.time()))
        proc = self._procs.get(str(job_dir))  # ours to reap, when this process launched it

        def gone() -> bool:
            return proc.poll() is not None if proc is not None else not jobfiles.process_alive(job_dir)

        if jobfiles.signal_group(job_dir, signal.SIGTERM):
            deadline = time.monotonic() + CANCEL_GRACE_S
            while not gone() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not gone():
                jobfiles.signal_group(job_dir, signal.SIGKILL)
                if proc is not None:
                    proc.wait(CANCEL_GRACE_S)
        self._reap(job_dir)
        state = read_json(job_dir / jobfiles.STATUS) or {}
        if state.get("status") not in TERMINAL:
            state["status"] = "cancelled"
            write_json(job_dir / jobfiles.STATUS, state)
        return BackendStatus(status="cancelled")

    def checkpoints(self, provider_job_id: str) -> list[dict[str, Any]]:
        """Checkpoints of a running job (removed once its student is recorded)."""
        out = []
        for p in sorted((self.job_dir(provider_job_id) / jobfiles.CHECKPOINTS).glob("checkpoint-*")):
            step = p.name.split("-")[-1]
            if step.isdigit():
                out.append({"object": "fine_tuning.job.checkpoint", "step_number": int(step), "path": str(p)})
        return out

    def wait_process(self, provider_job_id: str, timeout: float | None = None) -> None:
        """Block until this process's child for the job exits (tests, benchmarks)."""
        proc = self._procs.get(str(self.job_dir(provider_job_id)))
        if proc is not None:
            proc.wait(timeout)


LAUNCH_GRACE_S = 60.0  # a prepared job not launched by then is launched by the next poll


class _locked:
    """An exclusive lock on the job directory (two pollers must not record a student twice)."""

    def __init__(self, job_dir: Path) -> None:
        self.path = Path(job_dir) / ".lock"

    def __enter__(self) -> None:
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


_BACKENDS: dict[int, LoraBackend] = {}


def lora_backend(*, store=None, settings: Any = None, **options: Any) -> LoraBackend:
    """One backend per store in this process (it keeps the Popen handles of the jobs it launched)."""
    if store is None:
        raise FineTuneError("the lora backend needs a store")
    threads = options.pop("threads", None) or getattr(settings, "finetune_threads", None)
    backend = _BACKENDS.get(id(store))
    if backend is None or backend.store is not store or options:
        backend = LoraBackend(store, threads=threads, **options)
        if not options:
            _BACKENDS[id(store)] = backend
    return backend


__all__ = ["LoraBackend", "MAX_RESTARTS", "default_threads", "lora_backend"]
