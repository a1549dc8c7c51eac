"""Fine-tune jobs: Protege's own ``ftjob_`` records driving any backend.

``start_job`` records the job, hands it to the backend and returns at once; ``sync_job`` (the poll
step) asks the backend where it is, appends status changes and new events to the store and records
the resulting model. Reads (``get_job``, HTTP GET) sync jobs that are still moving, so a status is
never staler than one provider round trip; ``sync_all`` is the loop body for a background poller.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from protege.store import jobs as store_jobs

from protege.distill.finetune.backends import FineTuneError, JobSpec, get_backend, validate_hyperparameters
from protege.settings import load_settings
from protege.store import datasets as store_datasets

log = logging.getLogger("protege.distill.finetune.jobs")

TERMINAL = store_jobs.TERMINAL_STATUSES
LOCAL_BACKENDS = ("local", "lora")  # students trained here and served as protege/<name>


def resolve_dataset(store, dataset: str) -> tuple[str, str | None, str]:
    """(train path, validation path, kind) of a dataset version recorded by the dataset builder."""
    import orjson

    row = store_datasets.get_dataset_row(store, dataset)
    if row is None:
        raise FineTuneError(f"no dataset version {dataset!r}", param="dataset_id", code="dataset_not_found", status=404)
    files = orjson.loads(row.files or "{}")

    def path(split: str) -> str | None:
        info = files.get(split) or {}
        p = info.get("path")
        if not p:
            return None
        candidate = Path(p)
        if not candidate.is_absolute() and not candidate.exists():
            candidate = Path(store.data_dir) / candidate
        return str(candidate)

    train = path("train")
    if not train:
        raise FineTuneError(f"dataset {dataset} has no training file", param="dataset_id", code="dataset_empty")
    return train, path("validation"), row.kind or "sft"


def _backend(store, name: str, settings: Any, options: dict[str, Any] | None) -> Any:
    return get_backend(name, store=store, settings=settings, **(options or {}))


def _settings(settings: Any) -> Any:
    if settings is not None:
        return settings

    return load_settings()


def start_job(
    store,
    *,
    backend: str = "openai",
    model: str | None = None,
    dataset: str | None = None,
    training_file: str | None = None,
    validation_file: str | None = None,
    method: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    suffix: str | None = None,
    seed: int | None = None,
    metadata: dict[str, str] | None = None,
    name: str | None = None,
    settings: Any = None,
    backend_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record and start a job. ``model`` may be ``ft:...`` or an earlier ``ftjob_`` id to continue
    from its fine-tuned model. Input problems raise :class:`FineTuneError` before anything is stored;
    a provider refusal after the record exists marks the job failed (the record says why).
    ``method`` defaults to the dataset's kind (``dpo`` datasets train with DPO), else supervised."""
    if dataset and training_file:
        raise FineTuneError("give a dataset id or a training file, not both", param="dataset_id")
    if dataset:
        training_file, ds_validation, kind = resolve_dataset(store, dataset)
        validation_file = validation_file or ds_validation
        method = method or ("dpo" if kind == "dpo" else "supervised")
    method = method or "supervised"
    hp = validate_hyperparameters(method, dict(hyperparameters or {}), backend)
    if not training_file:
        raise FineTuneError("a dataset id or a training file is required", param="training_file", code="missing_training_file")
    for label, path in (("training_file", training_file), ("validation_file", validation_file)):
        if path and not Path(path).is_file():
            raise FineTuneError(f"{label} {path} does not exist", param=label, code="file_not_found")
    if backend == "local":
        model = model or "tfidf-sgd"
    if model and model.startswith("ftjob_"):
        # Continual fine-tuning by Protege job id: continue from that job's resulting model.
        prior = store_jobs.get_job(store, model)
        if prior is None or not prior["fine_tuned_model"] or prior["status"] != "succeeded":
            raise FineTuneError(f"{model} has no fine-tuned model to continue from", param="model", code="model_not_found")
        if prior["backend"] in LOCAL_BACKENDS or backend in LOCAL_BACKENDS:
            raise FineTuneError("continual fine-tuning needs a cloud backend (local students retrain from scratch)", param="model")
        model = prior["fine_tuned_model"]
    if not model:
        if backend == "lora":
            raise FineTuneError("the lora backend needs a base model: a Hugging Face id, a local model directory or a .gguf file", param="model")
        raise FineTuneError("a base model is required (e.g. gpt-4.1-mini-2025-04-14, or ft:... to continue)", param="model")
    if suffix is not None and not (1 <= len(suffix) <= 64):
        raise FineTuneError("suffix must be 1 to 64 characters", param="suffix")
    if metadata and len(metadata) > 16:
        raise FineTuneError("metadata has more than 16 keys", param="metadata")
    if seed is not None and not (0 <= int(seed) <= 2147483647):
        raise FineTuneError("seed must be between 0 and 2147483647", param="seed")
    if backend in LOCAL_BACKENDS:
        from protege.distill.finetune.local_student import check_name

        check_name(name or suffix or "student")
    impl = _backend(store, backend, _settings(settings), backend_options)  # unknown backend / missing key: before recording
    check_model = getattr(impl, "check_model", None)
    if check_model is not None:  # backends that can tell a bad base model before anything is recorded
        check_model(model)
    # What the store records and the backend is given alike.
    training = {"model": model, "method": method, "training_file": str(training_file),
                "validation_file": str(validation_file) if validation_file else None, "hyperparameters": hp,
                "suffix": suffix, "seed": seed}
    job = store_jobs.create_job(store, backend=backend, dataset_id=dataset, metadata=metadata,
                                name=(name or suffix or "student") if backend in LOCAL_BACKENDS else name, **training)
    spec = JobSpec(**training, metadata=dict(metadata or {}), name=job["name"], job_id=job["id"])
    store_jobs.add_events(store, job["id"], [{"message": f"Job created on backend {backend}"}])
    try:
        started = impl.start(spec)
    except FineTuneError as exc:
        store_jobs.add_events(store, job["id"], [{"message": exc.message, "level": "error"}])
        store_jobs.update_job(
            store, job["id"], status="failed", error={"code": exc.code, "message": exc.message, "param": exc.param}, status_message=exc.message
        )
        raise
    # A terminal state (a local job can finish before start() returns) is recorded by sync_job,
    # with its error and result, not here.
    early = started.status if started.status not in TERMINAL else None
    store_jobs.update_job(store, job["id"], provider_job_id=started.provider_job_id, provider_files=started.files, status=early)
    return sync_job(store, job["id"], settings=settings, backend_options=backend_options, _impl=impl)


def sync_job(
    store, job_id: str, *, settings: Any = None, backend_options: dict[str, Any] | None = None, _impl: Any = None
) -> dict[str, Any]:
    """One poll step: provider status + new events into the store. Terminal jobs are left alone."""
    job = store_jobs.get_job(store, job_id)
    if job is None:
        raise FineTuneError(f"no fine-tuning job {job_id}", param="id", code="job_not_found", status=404)
    if job["status"] in TERMINAL or not job["provider_job_id"]:
        return job
    impl = _impl or _backend(store, job["backend"], _settings(settings), backend_options)
    pid = job["provider_job_id"]
    state = impl.status(pid)
    store_jobs.add_events(store, job_id, impl.events(pid, known=store_jobs.event_ids(store, job_id)))
    fields: dict[str, Any] = {}
    if state.fine_tuned_model and state.fine_tuned_model != job["fine_tuned_model"]:
        fields["fine_tuned_model"] = state.fine_tuned_model
    result = dict(job["result"])
    result.update(state.result or {})
    if state.trained_tokens is not None:
        result["trained_tokens"] = state.trained_tokens
    if state.hyperparameters:
        result["hyperparameters"] = state.hyperparameters
    if result != job["result"]:
        fields["result"] = result
    if state.error and state.status == "failed":
        fields["error"] = state.error
    if state.status == "succeeded" and job["backend"] != "local":
        try:
            checkpoints = impl.checkpoints(pid)
        except FineTuneError:
            checkpoints = []
        if checkpoints:
            result["checkpoints"] = checkpoints
            fields["result"] = result
    if state.status != job["status"] or fields:
        message = (state.error or {}).get("message") if state.status == "failed" else None
        job = store_jobs.update_job(store, job_id, status=state.status, status_message=message, **fields)
    return job


def sync_all(store, *, settings: Any = None) -> int:
    """Advance every unfinished job once (the body of a poller loop). Returns how many were polled."""
    polled = 0
    after = None
    while True:
        page, has_more = store_jobs.list_jobs(store, after=after, limit=100)
        for job in page:
            if job["status"] not in TERMINAL and job["provider_job_id"]:
                try:
                    sync_job(store, job["id"], settings=settings)
                except FineTuneError as exc:
                    log.warning("polling %s failed: %s", job["id"], exc.message)
                polled += 1
        if not has_more or not page:
            return polled
        after = page[-1]["id"]


def wait_job(
    store,
    job_id: str,
    *,
    interval: float = 1.0,
    timeout: float | None = None,
    settings: Any = None,
    backend_options: dict[str, Any] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll until the job ends (or ``timeout`` seconds pass; then the current state is returned)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = sync_job(store, job_id, settings=settings, backend_options=backend_options)
        if on_update is not None:
            on_update(job)
        if job["status"] in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return job
        time.sleep(interval)


def get_job(store, job_id: str, *, refresh: bool = True, settings: Any = None, backend_options: dict[str, Any] | None = None) -> dict[str, Any]:
    job = store_jobs.get_job(store, job_id)
    if job is None:
        raise FineTuneError(f"no fine-tuning job {job_id}", param="id", code="job_not_found", status=404)
    if refresh and job["status"] not in TERMINAL:
        try:
            job = sync_job(store, job_id, settings=settings, backend_options=backend_options)
        except FineTuneError as exc:
            log.warning("could not refresh %s: %s", job_id, exc.message)
    return job


def cancel_job(store, job_id: str, *, settings: Any = None, backend_options: dict[str, Any] | None = None) -> dict[str, Any]:
    job = get_job(store, job_id, settings=settings, backend_options=backend_options)
    if job["status"] in TERMINAL:
        raise FineTuneError(f"job {job_id} has already finished ({job['status']})", param="id", code="job_completed")
    if job["provider_job_id"]:
        impl = _backend(store, job["backend"], _settings(settings), backend_options)
        impl.cancel(job["provider_job_id"])
        store_jobs.add_events(store, job_id, impl.events(job["provider_job_id"]))
    store_jobs.add_events(store, job_id, [{"message": "Cancelled through Protege"}])
    return store_jobs.update_job(store, job_id, status="cancelled", status_message="cancelled by request")


def list_jobs(store, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], bool]:
    if not 1 <= limit <= 100:
        raise FineTuneError("limit must be between 1 and 100", param="limit")
    return store_jobs.list_jobs(store, after=after, limit=limit, metadata=metadata)


def list_events(store, job_id: str, *, after: str | None = None, limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
    get_job(store, job_id)  # 404 for unknown jobs, and fresh events for running ones
    if not 1 <= limit <= 100:
        raise FineTuneError("limit must be between 1 and 100", param="limit")
    return store_jobs.list_events(store, job_id, after=after, limit=limit)


def job_view(store, job: dict[str, Any], *, history: bool = True) -> dict[str, Any]:
    """The API/CLI shape: OpenAI's fine_tuning.job fields plus Protege's (backend, history, result)."""
    view = {
        "id": job["id"],
        "object": "protege.fine_tuning.job",
        "created_at": job["created_at"],
        "finished_at": job["finished_at"],
        "backend": job["backend"],
        "status": job["status"],
        "model": job["model"],
        "method": {"type": job["method"], job["method"]: {"hyperparameters": job["hyperparameters"]}},
        "hyperparameters": job["hyperparameters"],
        "dataset_id": job["dataset_id"],
        "training_file": job["training_file"],
        "validation_file": job["validation_file"],
        "suffix": job["suffix"],
        "seed": job["seed"],
        "metadata": job["metadata"],
        "name": job["name"],
        "provider_job_id": job["provider_job_id"],
        "provider_files": job["provider_files"],
        "fine_tuned_model": job["fine_tuned_model"],
        "result": job["result"],
        "error": job["error"],
    }
    if history:
        view["status_history"] = store_jobs.status_history(store, job["id"])
    return view


__all__ = [
    "cancel_job",
    "get_job",
    "job_view",
    "list_events",
    "list_jobs",
    "resolve_dataset",
    "start_job",
    "sync_all",
    "sync_job",
    "wait_job",
]
