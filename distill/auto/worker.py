"""The automatic distillation loop: watch traffic, train, evaluate on held-out data, roll out, back out.

Each policy advances one small step per pass (:meth:`Worker.run_once`) through a *cycle* whose state
lives in the store, and every state is written BEFORE the side effect it leads to:

    pending --build dataset--> dataset_built --(state=launching)--> start job --> training
    training --poll--> evaluating --gate--> promoted (a route is created) | rejected | failed

So a worker killed at any point resumes from the store: a ``launching`` cycle first looks for a job
already tagged with its cycle id (adopting it instead of starting a second one), a ``training`` cycle
polls its recorded job, and a local job whose training thread died with the old process is restarted
into the same job row. Fine-tunes are never waited for: a pass polls, so one slow job never holds up
another policy.

Live routes are checked on every pass too: online agreement between student and teacher on paired
answers since the route entered its stage moves it forward (shadow -> canary -> full) or rolls it
back, once at least ``min_compared`` pairs exist.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from protege.store import auto as store_auto
from protege.store import jobs as store_jobs

from protege.distill.auto.agreement import AgreementResult, online_agreement, response_text
from protege.distill.auto.evaluation import evaluate_heldout
from protege.distill.auto.gate import compare_metric, parse_metric_spec
from protege.distill.auto.policies import CandidateSpec, Policy, PolicyError, stored_policy, sync_policies_file
from protege.distill.auto.rollout import next_stage, open_route, stage_params
from protege.distill.auto.waiting import DEFAULT_VALIDATION_FRACTION, TOO_FEW, policy_waiting, trigger_state
from protege.distill.auto.selection import CandidateResult, choose, latency_stats, split_for_selection, timed_answers
from protege.distill.datasets.builder import DatasetOptions, build_dataset, get_dataset
from protege.distill.finetune import jobs
from protege.distill.finetune.backends import JobSpec, get_backend
from protege.distill.finetune.jobs import sync_all
from protege.distill.finetune.students import StudentRegistry

log = logging.getLogger("protege.distill.auto")

# ---------------------------------------------------------------------------------------------
# Adapters to the other areas (dataset builder, fine-tune jobs, students). Kept here, small, so
# that a change of their API is a change in one place.


def _build_dataset(store: Any, policy: Policy, cycle: store_auto.AutoCycle) -> dict[str, Any]:
    """Build a dataset version for the policy; returns {id, train_path, validation_path}."""
    opts: dict[str, Any] = {
        "name": f"auto-{policy.name}",
        "models": [policy.match.model] if policy.match.model else [],
        "metadata": dict(policy.match.metadata),
        # Only the teacher's own answers: never train a student on a student's output.
        "exclude_students": True,
        # The validation split is the gate's held-out set: the student never trains on it.
        "validation_fraction": DEFAULT_VALIDATION_FRACTION,
        "seed": 0,
        **policy.dataset,
    }
    ds = build_dataset(store, DatasetOptions.from_dict(opts))
    return {"id": ds.id, "train_path": _str(ds.train_path), "validation_path": _str(ds.validation_path)}


def _str(path: Any) -> str | None:
    return None if path is None else str(path)


def _jobs() -> Any:
    return jobs


_SERVED_HERE = ("local", "lora")  # students Protege trains and serves itself, as protege/<name>


def _launch_job(store: Any, settings: Any, policy: Policy, cycle: store_auto.AutoCycle, ds: dict[str, Any],
                backend_options: dict[str, Any] | None = None, candidate: CandidateSpec | None = None,
                files: tuple[str, str | None] | None = None) -> str:
    """Start the fine-tune on the TRAIN split only (the validation split is the held-out gate set).

    ``candidate``: one student of a ``backend = "best"`` policy, trained on ``files`` (the train split
    minus the selection slice, and that slice as its validation file)."""
    jobs = _jobs()
    student = policy.student
    backend = candidate.job_backend if candidate else student.backend
    base_model = candidate.base_model if candidate else student.base_model
    hp = dict(candidate.hyperparameters if candidate else student.hyperparameters)
    name = None
    if backend in _SERVED_HERE:
        name = (candidate.name or f"{policy.student_name}-{candidate.label}") if candidate else policy.student_name
    metadata = {"protege_policy": cycle.policy_id, "protege_cycle": cycle.id, "protege_dataset": str(ds.get("id"))}
    if candidate is not None:
        metadata["protege_candidate"] = candidate.label
    train_file, validation_file = files if files else (ds.get("train_path"), None)
    job = jobs.start_job(
        store,
        backend=backend,
        model=base_model,
        training_file=train_file,
        validation_file=validation_file,
        hyperparameters=hp,
        suffix=student.suffix or (policy.name[:40] if backend not in _SERVED_HERE else None),
        seed=0,
        metadata=metadata,
        name=name,
        settings=settings,
        backend_options=backend_options,
    )
    return job["id"] if isinstance(job, dict) else job.id


def _find_job_for_cycle(store: Any, cycle_id: str, candidate: str | None = None) -> str | None:
    """A job a killed worker started for this cycle (or for one candidate of it) before it could record the id."""
    md = {"protege_cycle": cycle_id}
    if candidate is not None:
        md["protege_candidate"] = candidate
    rows, _more = store_jobs.list_jobs(store, limit=1000, metadata=md)
    return rows[-1]["id"] if rows else None  # the oldest, should there ever be two


def _revive_local_job(store: Any, settings: Any, job: dict[str, Any]) -> None:
    """A local job still 'running' in the store whose training thread died with an earlier process:
    adopt the student it already saved, or re-train it deterministically under the same job id."""
    backend = get_backend("local", store=store, settings=settings)
    pid = job.get("provider_job_id")
    if pid and getattr(backend, "runs", {}).get(pid) is not None:
        return  # trained (or training) in this process
    saved = [s for s in store_jobs.list_students(store, job.get("name")) if s.get("job_id") == job["id"]]
    if saved:
        s = saved[0]
        model = f"protege/{s['name']}@v{s['version']}"
        store_jobs.add_events(store, job["id"], [{"message": f"Adopted {model}, saved before the worker stopped"}])
        store_jobs.update_job(store, job["id"], status="succeeded", fine_tuned_model=model,
                              result={**(job.get("result") or {}), "student": {"name": s["name"], "version": s["version"], "path": s["path"], "sha256": s["sha256"]}})
        return
    spec = JobSpec(
        model=job["model"], training_file=job["training_file"], validation_file=job.get("validation_file"),
        method=job.get("method") or "supervised", hyperparameters=dict(job.get("hyperparameters") or {}),
        suffix=job.get("suffix"), seed=job.get("seed"), metadata=dict(job.get("metadata") or {}), name=job.get("name"), job_id=job["id"],
    )
    started = backend.start(spec)
    store_jobs.add_events(store, job["id"], [{"message": "Training restarted: the process running it had stopped"}])
    store_jobs.update_job(store, job["id"], provider_job_id=started.provider_job_id, status=started.status)


_RUNNING: dict[int, Worker] = {}  # id(store) -> the worker started over it in this process


def running_worker(store: Any) -> Worker | None:
    """The worker running over ``store`` in this process (``protege serve --worker``), if any."""
    return _RUNNING.get(id(store))


def _poll_job(store: Any, settings: Any, job_id: str, backend_options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Advance the job one poll (restarting a local job whose thread died) and return it."""
    job = store_jobs.get_job(store, job_id)
    if job is None:
        raise LookupError(f"fine-tune job {job_id} is gone")
    if job["backend"] == "local" and job["status"] not in store_jobs.TERMINAL_STATUSES:
        _revive_local_job(store, settings, job)
    return _jobs().sync_job(store, job_id, settings=settings, backend_options=(backend_options or {}).get(job["backend"]))


def _served_here(backend: str, student_model: str) -> bool:
    return backend in _SERVED_HERE or student_model.startswith("protege/")


def _answerer(store: Any, settings: Any, backend: str, student_model: str, client: Any = None) -> tuple[Callable[[list[dict[str, Any]]], str], Callable[[], None]]:
    """(one prompt -> the student's greedy answer, close): students served here in-process
    (protege/<name>: classifier, LoRA, endpoint students), cloud ones via the SDK."""
    if _served_here(backend, student_model):
        registry = StudentRegistry(store)
        close = getattr(registry, "close", None) or (lambda: None)
        return (lambda msgs: response_text(registry.complete({"model": student_model, "messages": msgs, "temperature": 0}))), close
    client = client or _cloud_client(settings, backend)

    def ask(msgs: list[dict[str, Any]]) -> str:
        resp = client.chat.completions.create(model=student_model, messages=msgs, temperature=0)
        return resp.choices[0].message.content or ""

    return ask, lambda: None


def _predict(store: Any, settings: Any, backend: str, student_model: str, prompts: list[list[dict[str, Any]]],
             client: Any = None) -> list[str]:
    """The student's answers to held-out prompts, 8 at a time (so LoRA students batch their answers;
    the SDK client is thread-safe)."""
    answer, close = _answerer(store, settings, backend, student_model, client)
    try:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="protege-gate") as pool:
            return list(pool.map(answer, prompts))
    finally:
        close()


def _cloud_client(settings: Any, backend: str) -> Any:
    import openai  # the SDK is loaded only for a cloud student (a heavy optional dependency)

    if backend == "azure":
        key = settings.azure_api_key.get_secret_value() if getattr(settings, "azure_api_key", None) else None
        return openai.AzureOpenAI(azure_endpoint=settings.azure_endpoint, api_key=key, api_version=settings.azure_api_version)
    key = settings.upstream_api_key.get_secret_value() if getattr(settings, "upstream_api_key", None) else None
    return openai.OpenAI(base_url=settings.upstream, api_key=key)


def _prompt_text(messages: list[dict[str, Any]]) -> str:
    """The request as a judge reads it: the last user turn's text."""
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _read_heldout(path: str | None) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Prompts (messages up to the last assistant turn) and reference answers of a JSONL split."""
    prompts: list[list[dict[str, Any]]] = []
    refs: list[str] = []
    if not path or not Path(path).exists():
        return prompts, refs
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            messages = orjson.loads(line).get("messages") or []
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
            if last is None:
                continue
            prompts.append(messages[:last])
            refs.append(response_text({"choices": [{"message": messages[last]}]}))
    return prompts, refs


def _candidate_result(spec: CandidateSpec, job_id: str, job: dict[str, Any], error: str | None) -> Any:
    return CandidateResult(spec.label, spec.job_backend, job_id, job.get("fine_tuned_model"), str(job.get("status")),
                           error=error if job.get("status") != "succeeded" else None)


def _is_final(exc: Exception) -> bool:
    """Errors that retrying the same step cannot fix."""
    if isinstance(exc, (ValueError, LookupError)):
        return True
    status = getattr(exc, "status", None)
    return type(exc).__name__ == "FineTuneError" and isinstance(status, int) and status < 500


# ---------------------------------------------------------------------------------------------
# Trigger


def due(store: Any, policy_id: str, policy: Policy, now: float | None = None) -> tuple[bool, dict[str, Any]]:
    """Whether the policy should start a cycle now, and the numbers behind it (``waiting``: why not,
    see :mod:`protege.distill.auto.waiting`)."""
    state = trigger_state(store, policy_id, policy, now)
    return state.due, {"new_eligible": state.new_eligible, "since_seq": state.since_seq, "elapsed_s": state.elapsed_s,
                       "waiting": None if state.due else state.message}


def _too_few_items(policy: Policy, dataset: Any) -> dict[str, Any] | None:
    """The shortfall when a dataset's held-out split is below the gate's ``min_items`` (no student
    trained on it could pass the gate, so none is trained), else None."""
    held_out = int(dataset.counts.get("validation", 0))
    need = policy.gate.min_items
    if held_out >= need:
        return None
    examples = int(dataset.counts.get("final", 0))
    share = held_out / examples if held_out and examples else float(dataset.options.get("validation_fraction") or DEFAULT_VALIDATION_FRACTION)
    needed_examples = math.ceil(need / share) if share > 0 else need
    return {"held_out": held_out, "min_items": need, "examples": examples, "validation_share": round(share, 4),
            "needed_examples": needed_examples, "short_by": max(1, needed_examples - examples)}


# ---------------------------------------------------------------------------------------------
# The worker


class Worker:
    """Runs the loop in a thread (``start``/``stop``) or one pass at a time (``run_once``)."""

    def __init__(self, store: Any, settings: Any = None, *, interval: float = 5.0, policies_file: str | None = None,
                 clock: Callable[[], float] = time.time, backend_options: dict[str, dict[str, Any]] | None = None,
                 student_client: Any = None) -> None:
        """``backend_options``: per fine-tune backend, passed to it (e.g. a fine-tuning endpoint other than
        the proxy's upstream); ``student_client``: the OpenAI client that evaluates cloud students
        (default: the configured upstream / Azure endpoint)."""
        self.store = store
        self.backend_options = backend_options or {}
        self.student_client = student_client
        self.settings = settings
        self.interval = interval
        self.policies_file = policies_file or (getattr(settings, "policies_file", None) if settings is not None else None)
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._synced = False
        # What the last pass found to wait on ("topics: waiting for traffic: 480 of 500 ..."), for the
        # log, `protege worker --once` and the worker status API.
        self.waiting: list[str] = []
        self.last_pass_at: float | None = None
        self.last_actions: list[str] = []
        self._logged_waiting: dict[str, str] = {}
        # The policies' locks, each held from a cycle's start to its end, all over one connection
        # (store.auto.PolicyLocks): a locked-out pass costs the database no connection per policy.
        self._locks = store_auto.PolicyLocks(store)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Worker:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="protege-auto-worker", daemon=True)
        self._thread.start()
        _RUNNING[id(self.store)] = self
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if _RUNNING.get(id(self.store)) is self:
            del _RUNNING[id(self.store)]
        self.release_locks()

    def release_locks(self) -> None:
        """Let other workers take this worker's policies (its open cycles resume there)."""
        self._locks.release_all()

    def _may_run(self, policy_id: str) -> bool:
        """Whether this worker holds (or now takes) the policy's lock: another worker's cycle of it
        is left to that worker (on DuckDB always, one process writes the file)."""
        return self._locks.acquire(policy_id)

    def _release_idle(self) -> None:
        """Release the locks of policies with no open cycle, so that any worker may start the next one
        (a lock is kept while its cycle is open, across passes: a local student training in this
        process is never restarted by another worker while this one lives)."""
        for policy_id in self._locks.holding:
            if store_auto.open_cycle(self.store, policy_id) is None:
                self._locks.release(policy_id)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def local_jobs_training(self) -> bool:
        """Whether a local student is training in a thread of this process (``--once`` waits for it)."""
        from protege.distill.finetune.local_student import local_backend

        return any(getattr(r, "thread", None) is not None and r.thread.is_alive()
                   for r in getattr(local_backend(store=self.store), "runs", {}).values())

    def status(self) -> dict[str, Any]:
        """The worker as the status API shows it: running, its interval, the last pass and what it waits on."""
        return {"object": "protege.worker", "running": self.running, "interval": self.interval,
                "last_pass_at": None if self.last_pass_at is None else int(self.last_pass_at),
                "last_actions": list(self.last_actions), "waiting": list(self.waiting)}

    def wait_local_jobs(self, timeout: float = 600.0) -> None:
        """Let local students training in this process finish (before the store is closed)."""
        # scikit-learn is loaded only when a local student is in play (a heavy optional dependency)
        from protege.distill.finetune.local_student import local_backend

        backend = local_backend(store=self.store)
        deadline = time.monotonic() + timeout
        for run in list(getattr(backend, "runs", {}).values()):
            thread = getattr(run, "thread", None)
            if thread is not None and thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for action in self.run_once():
                    log.info("%s", action)
                self._log_waiting()
            except Exception:
                log.exception("automatic distillation pass failed")
            try:  # cloud fine-tunes advance even when no policy is waiting on them
                sync_all(self.store, settings=self.settings)
            except Exception:
                log.exception("polling fine-tune jobs failed")
            self._stop.wait(self.interval)

    def _log_waiting(self) -> None:
        """One line per waiting policy each pass: INFO when it says something new, DEBUG when it
        repeats the last pass word for word (an idle loop does not fill the log)."""
        seen: dict[str, str] = {}
        for line in self.waiting:
            name = line.split(":", 1)[0]
            seen[name] = line
            log.log(logging.DEBUG if self._logged_waiting.get(name) == line else logging.INFO, "%s", line)
        self._logged_waiting = seen

    # -- one pass ----------------------------------------------------------------------------

    def run_once(self) -> list[str]:
        """Advance every policy and every live route by what can be done now; returns what was done
        (and leaves in :attr:`waiting` what each idle policy waits on)."""
        actions: list[str] = []
        waiting: list[str] = []  # published whole at the end of the pass (the status API reads it)
        if self.policies_file and not self._synced:
            sync_policies_file(self.store, self.policies_file)
            self._synced = True
            actions.append(f"loaded policies from {self.policies_file}")
        for row in store_auto.list_policies(self.store, enabled_only=True):
            try:
                policy = stored_policy(row)
            except PolicyError as exc:
                log.error("skipping policy %s: %s", row.name, exc)
                continue
            if not self._may_run(row.id):
                waiting.append(f"{row.name}: another worker runs this policy's cycle")
                continue
            try:
                actions += self.step_policy(row.id, policy)
            except Exception as exc:  # one policy's failure must not stop the others
                log.exception("policy %s failed", row.name)
                actions.append(f"{row.name}: error: {exc}")
            try:  # what it waits on now, after this pass's step
                w = policy_waiting(self.store, row.id, policy, now=self.clock())
            except Exception:
                log.exception("policy %s: could not tell what it waits on", row.name)
                w = None
            if w is not None:
                waiting.append(f"{row.name}: {w['message']}")
        for route in store_auto.active_routes(self.store):
            if not self._may_run(route.policy_id):  # that policy's worker checks its route
                continue
            try:
                actions += self.step_route(route)
            except Exception as exc:
                log.exception("route %s check failed", route.id)
                actions.append(f"route {route.id}: error: {exc}")
        self._release_idle()
        self.waiting = waiting
        self.last_pass_at = self.clock()
        self.last_actions = actions
        return actions

    def step_policy(self, policy_id: str, policy: Policy) -> list[str]:
        store = self.store
        actions: list[str] = []
        cycle = store_auto.open_cycle(store, policy_id)
        if cycle is None:
            ok, numbers = due(store, policy_id, policy, self.clock())
            if not ok:
                return actions
            cycle = store_auto.create_cycle(store, policy_id, until_seq=store_auto.max_seq(store))
            actions.append(f"{policy.name}: cycle {cycle.id} started ({numbers['new_eligible']} new eligible completions)")
        name = policy.name
        try:
            if cycle.state == "pending":
                ds = _build_dataset(store, policy, cycle)
                cycle = store_auto.update_cycle(store, cycle.id, dataset_id=ds["id"], state="dataset_built")
                actions.append(f"{name}: dataset {ds['id']} built")
                short = _too_few_items(policy, get_dataset(store, ds["id"]))
                if short is not None:
                    return actions + self._reject_too_few(policy_id, policy, cycle, short)
            if policy.student.backend == "best" and cycle.state in ("dataset_built", "launching", "training"):
                cycle, more = self._step_best(policy_id, policy, cycle)
                actions += more
                if cycle.state != "evaluating":
                    return actions
            if cycle.state == "dataset_built":
                # Persist the intent BEFORE the side effect: a crash after the job starts but before its
                # id is recorded leaves "launching", and resume adopts the job tagged with this cycle.
                cycle = store_auto.update_cycle(store, cycle.id, state="launching", attempts=cycle.attempts + 1)
                job_id = _launch_job(store, self.settings, policy, cycle, self._dataset(cycle), self.backend_options.get(policy.student.backend))
                cycle = store_auto.update_cycle(store, cycle.id, job_id=job_id, state="training")
                actions.append(f"{name}: fine-tune {job_id} started")
            elif cycle.state == "launching":
                job_id = _find_job_for_cycle(store, cycle.id)
                if job_id is None:
                    job_id = _launch_job(store, self.settings, policy, cycle, self._dataset(cycle), self.backend_options.get(policy.student.backend))
                    actions.append(f"{name}: fine-tune {job_id} started (resumed)")
                else:
                    actions.append(f"{name}: adopted fine-tune {job_id}")
                cycle = store_auto.update_cycle(store, cycle.id, job_id=job_id, state="training")
            if cycle.state == "training":
                job = _poll_job(store, self.settings, cycle.job_id, self.backend_options)  # type: ignore[arg-type]
                status = job.get("status")
                if status == "succeeded":
                    model = job.get("fine_tuned_model")
                    cycle = store_auto.update_cycle(store, cycle.id, student_model=model, state="evaluating")
                    actions.append(f"{name}: fine-tune {cycle.job_id} succeeded -> {model}")
                elif status in ("failed", "cancelled"):
                    err = job.get("error")
                    d = store_auto.record_decision(store, policy_id, "gate", "reject", f"fine-tune {status}",
                                                   {"job_id": cycle.job_id, "error": err}, cycle_id=cycle.id)
                    store_auto.update_cycle(store, cycle.id, state="failed", error=f"fine-tune {status}: {err}", decision_id=d.id)
                    actions.append(f"{name}: fine-tune {cycle.job_id} {status}")
                    return actions
                else:
                    return actions
            if cycle.state == "evaluating":
                actions += self._evaluate(policy_id, policy, cycle)
        except Exception as exc:
            # Dataset/launch problems (too little data, bad options, a provider refusing the job)
            # end the cycle; the next one starts when the trigger fires again on new traffic.
            # Anything else (a network error while polling) is retried on the next pass.
            if cycle.state in ("pending", "dataset_built") or _is_final(exc):
                d = store_auto.record_decision(store, policy_id, "gate", "reject", f"cycle failed: {exc}", {"state": cycle.state}, cycle_id=cycle.id)
                store_auto.update_cycle(store, cycle.id, state="failed", error=str(exc)[:2000], decision_id=d.id)
                actions.append(f"{name}: cycle {cycle.id} failed: {exc}")
                return actions
            raise
        return actions

    def _reject_too_few(self, policy_id: str, policy: Policy, cycle: store_auto.AutoCycle, short: dict[str, Any]) -> list[str]:
        """End a cycle whose held-out split cannot reach ``min_items``, before any training. It does not
        count for ``min_interval``: the next cycle starts once ``short_by`` more eligible completions are in."""
        reason = (f"too few held-out items: {short['held_out']} (the gate needs {short['min_items']}); "
                  f"about {short['needed_examples']} examples needed at this validation share, the dataset has {short['examples']}")
        d = store_auto.record_decision(self.store, policy_id, "gate", "reject", reason,
                                       {"dataset_id": cycle.dataset_id, TOO_FEW: short}, cycle_id=cycle.id)
        store_auto.update_cycle(self.store, cycle.id, state="rejected", decision_id=d.id, error=f"{TOO_FEW}: {reason}",
                                evaluation={"dataset_id": cycle.dataset_id, "n_items": short["held_out"], TOO_FEW: short})
        return [f"{policy.name}: cycle {cycle.id} rejected: {reason}; it retries after {short['short_by']} more eligible completions"]

    # -- backend = "best": several candidates, one winner ----------------------------------------

    def _step_best(self, policy_id: str, policy: Policy, cycle: store_auto.AutoCycle) -> tuple[store_auto.AutoCycle, list[str]]:
        """Launch every candidate on the same data, wait for all, choose within the latency budget.

        Same resumability as one job: each candidate's job is tagged with the cycle and its label, so
        a restarted worker adopts what was started; the selection files are written once per cycle."""
        store, name = self.store, policy.name
        actions: list[str] = []
        specs = policy.student.candidate_specs()
        ds = self._dataset(cycle)
        if cycle.state == "dataset_built":
            cycle = store_auto.update_cycle(store, cycle.id, state="launching", attempts=cycle.attempts + 1)
        fit, sel = split_for_selection(ds["train_path"], store.artifact_dir("auto", cycle.id), policy.student.selection_fraction,
                                       seed=policy.gate.seed)
        if cycle.state == "launching":
            first = None
            for spec in specs:
                job_id = _find_job_for_cycle(store, cycle.id, spec.label)
                if job_id is None:
                    try:
                        job_id = _launch_job(store, self.settings, policy, cycle, ds, self.backend_options.get(spec.job_backend),
                                             candidate=spec, files=(fit, sel))
                    except Exception as exc:
                        if not _is_final(exc):
                            raise
                        store_auto.record_decision(store, policy_id, "candidate", "not_started", f"{spec.label} could not start: {exc}",
                                                   {"candidate": spec.label, "backend": spec.job_backend}, cycle_id=cycle.id)
                        actions.append(f"{name}: candidate {spec.label} could not start: {exc}")
                        continue
                    actions.append(f"{name}: candidate {spec.label}: fine-tune {job_id} started")
                first = first or job_id
            cycle = store_auto.update_cycle(store, cycle.id, job_id=first, state="training")
        results = []
        waiting = False
        for spec in specs:
            job_id = _find_job_for_cycle(store, cycle.id, spec.label)
            if job_id is None:
                results.append(self._not_started(policy_id, cycle.id, spec))
                continue
            job = _poll_job(store, self.settings, job_id, self.backend_options)
            if job.get("status") not in store_jobs.TERMINAL_STATUSES:
                waiting = True
                continue
            err = job.get("error") or {}
            results.append(_candidate_result(spec, job_id, job, err.get("message") if isinstance(err, dict) else str(err)))
        if waiting:
            return cycle, actions
        selection = self._choose(policy, results, sel)
        winner = selection.winner
        d = store_auto.record_decision(store, policy_id, "select", "select" if winner else "reject", selection.reason,
                                       selection.to_dict(), cycle_id=cycle.id)
        actions.append(f"{name}: {'selected ' + winner.label if winner else 'no student selected'} ({selection.reason})")
        if winner is None:
            cycle = store_auto.update_cycle(store, cycle.id, state="rejected", decision_id=d.id, error=selection.reason[:2000])
            return cycle, actions
        cycle = store_auto.update_cycle(store, cycle.id, student_model=winner.model, job_id=winner.job_id, state="evaluating")
        return cycle, actions

    def _not_started(self, policy_id: str, cycle_id: str, spec: CandidateSpec) -> Any:
        rows, _ = store_auto.list_decisions(self.store, policy_id, limit=1000)
        why = next((r.reason for r in rows if r.kind == "candidate" and r.cycle_id == cycle_id
                    and store_auto.loads(r.details, {}).get("candidate") == spec.label), None)
        return CandidateResult(spec.label, spec.job_backend, None, None, "not_started", error=why)

    def _choose(self, policy: Policy, results: list[Any], selection_path: str) -> Any:
        """Each trained candidate answers every selection prompt in turn (its latency), scored as the gate scores."""
        prompts, refs = _read_heldout(selection_path)
        metric = policy.student.selection_metric or policy.gate.metrics[0]
        label = parse_metric_spec(metric)[0]
        inputs = [_prompt_text(p) for p in prompts]
        for r in results:
            if r.status != "succeeded" or not r.model:
                continue
            try:
                answer, close = _answerer(self.store, self.settings, r.backend, r.model, self.student_client)
                try:
                    outs, times = timed_answers(answer, prompts)  # one at a time: the latency a client sees
                finally:
                    close()
                r.score = round(compare_metric(metric, outs, refs, refs, seed=policy.gate.seed, inputs=inputs).student, 6)
                r.latency_ms_p50, r.latency_ms_p90 = latency_stats(times)
                r.n = len(outs)
            except Exception as exc:  # a candidate that cannot answer is out, not the cycle
                log.warning("candidate %s could not be evaluated", r.label, exc_info=True)
                r.status, r.error = "failed", f"could not be evaluated: {exc}"
        return choose(results, label, policy.student.latency_budget_ms)

    def _selection_decision(self, policy_id: str, cycle_id: str) -> Any:
        rows, _ = store_auto.list_decisions(self.store, policy_id, limit=1000)
        return next((r for r in rows if r.kind == "select" and r.cycle_id == cycle_id), None)

    def _student_backend(self, policy: Policy, cycle: store_auto.AutoCycle) -> str:
        """The winning candidate's backend for ``best`` policies, else the policy's."""
        if policy.student.backend != "best":
            return policy.student.backend
        job = store_jobs.get_job(self.store, cycle.job_id) if cycle.job_id else None
        return job["backend"] if job else "local"

    def _dataset(self, cycle: store_auto.AutoCycle) -> dict[str, Any]:
        ds = get_dataset(self.store, cycle.dataset_id)  # type: ignore[arg-type]
        if ds is None:
            raise LookupError(f"dataset {cycle.dataset_id} is gone")
        return {"id": ds.id, "train_path": _str(ds.train_path), "validation_path": _str(ds.validation_path)}

    def _evaluate(self, policy_id: str, policy: Policy, cycle: store_auto.AutoCycle) -> list[str]:
        """Score the student on the held-out split, decide with the gate, record everything."""
        ds = self._dataset(cycle)
        prompts, refs = _read_heldout(ds.get("validation_path"))
        if not refs:
            raise ValueError(f"dataset {ds['id']} has no held-out (validation) items to evaluate the student on")
        backend = self._student_backend(policy, cycle)
        student_out = _predict(self.store, self.settings, backend, cycle.student_model, prompts, self.student_client) if prompts else []  # type: ignore[arg-type]
        result, run_id = evaluate_heldout(self.store, policy, cycle, prompts, refs, student_out, [_prompt_text(p) for p in prompts])
        disagreements = [
            {"prompt": (p[-1].get("content") if p else None), "teacher": r, "student": s}
            for p, r, s in zip(prompts, refs, student_out) if s.strip() != r.strip()
        ][:10]
        evaluation = {"dataset_id": ds["id"], "n_items": len(refs), "gate": result.to_dict(), "examples_disagreeing": disagreements,
                      "eval_run_id": run_id}
        if policy.student.backend == "best":
            selected = self._selection_decision(policy_id, cycle.id)
            if selected is not None:
                evaluation["selection"] = {"decision_id": selected.id, "reason": selected.reason, "backend": backend}
        outcome = "promote" if result.passed else "reject"
        decision = store_auto.record_decision(
            store=self.store, policy_id=policy_id, kind="gate", outcome=outcome, reason=result.reason,
            details={"student_model": cycle.student_model, "job_id": cycle.job_id, **evaluation}, cycle_id=cycle.id,
        )
        actions = [f"{policy.name}: gate {'passed' if result.passed else 'failed'} ({result.reason})"]
        if result.passed:
            stage = policy.rollout.stages[0]
            route = open_route(self.store, policy_id, policy, cycle.student_model, stage, cycle.id)  # type: ignore[arg-type]
            store_auto.update_cycle(self.store, cycle.id, evaluation=evaluation, decision_id=decision.id, state="promoted")
            actions.append(f"{policy.name}: route {route.id} -> {cycle.student_model} at stage {stage}")
        else:
            store_auto.update_cycle(self.store, cycle.id, evaluation=evaluation, decision_id=decision.id, state="rejected")
        return actions

    def step_route(self, route: store_auto.AutoRoute) -> list[str]:
        """Advance or roll back a live route on its online agreement."""
        row = store_auto.get_policy(self.store, route.policy_id)
        if row is None:
            return []
        policy = stored_policy(row)
        ag: AgreementResult = online_agreement(self.store, route, policy)
        r = policy.rollout
        details = {"stage": route.stage, "student_model": route.student_model, "agreement": ag.rate, "compared": ag.n,
                   "agreed": ag.agreed, "threshold": r.agreement_threshold, "min_compared": r.min_compared}
        if ag.n < r.min_compared or ag.rate is None:
            return []
        if ag.rate < r.agreement_threshold:
            store_auto.end_route(self.store, route.id)
            store_auto.record_decision(self.store, route.policy_id, "rollback", "rollback",
                                       f"online agreement {ag.rate:.3f} < {r.agreement_threshold} over {ag.n} pairs at stage {route.stage}",
                                       details, cycle_id=route.cycle_id, route_id=route.id)
            return [f"{policy.name}: rolled back {route.student_model} (agreement {ag.rate:.3f} over {ag.n})"]
        target = next_stage(policy, route.stage)
        if target is None:
            return []
        p = stage_params(policy, target)
        store_auto.set_route_stage(self.store, route.id, target, p["percent"], store_auto.max_seq(self.store), p["compare_percent"])
        store_auto.record_decision(self.store, route.policy_id, "advance", "advance",
                                   f"online agreement {ag.rate:.3f} >= {r.agreement_threshold} over {ag.n} pairs: {route.stage} -> {target}",
                                   {**details, "to": target}, cycle_id=route.cycle_id, route_id=route.id)
        return [f"{policy.name}: {route.student_model} {route.stage} -> {target} (agreement {ag.rate:.3f} over {ag.n})"]
