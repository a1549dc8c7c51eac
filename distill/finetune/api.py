"""HTTP API for fine-tune jobs: ``/protege/v1/fine_tuning/jobs`` (list, start, get, cancel, events).

Shapes follow OpenAI's fine-tuning API (list envelopes, error JSON, ``after``/``limit`` cursors,
``metadata[k]=v`` filters) with Protege's own ``ftjob_`` ids. Handlers are plain ``def`` so FastAPI
runs them in its thread pool: starting or polling a cloud job is a blocking SDK call.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request

from protege import apikit

from protege.distill.finetune import jobs
from protege.distill.finetune.api_errors import FineTuneRoute
from protege.distill.finetune.interface import FineTuneError

# Jobs can spend money on a cloud account: when admin keys are configured only their holders may
# list, start or cancel them.
router = APIRouter(
    prefix="/protege/v1/fine_tuning/jobs", tags=["fine-tuning"], dependencies=[apikit.admin_only("Fine-tuning jobs")],
    route_class=FineTuneRoute,
)


def _settings(request: Request) -> Any:
    return getattr(request.app.state, "protege_settings", None)


@router.get("")
def list_jobs(request: Request, store: Any = Depends(apikit.store), limit: int = Depends(apikit.limit)) -> Any:
    meta = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
    items, more = jobs.list_jobs(store, after=request.query_params.get("after"), limit=limit, metadata=meta or None)
    return apikit.list_envelope([jobs.job_view(store, j, history=False) for j in items], more)


def _is_dataset_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("ds_") and "/" not in value and "\\" not in value


MAX_UPLOADED_EXAMPLES = 100_000


def _save_upload(store: Any, rows: list[dict[str, Any]]) -> str:
    """Uploaded examples as a JSONL artifact in the data directory, named by its sha256 (the same
    upload twice is one file), so a job reads a file the server wrote, never one a request named."""
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    path = store.artifact_dir("uploads") / f"{hashlib.sha256(data).hexdigest()}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".partial")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def _start(store: Any, settings: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Write any uploaded examples, then start the job (blocking: called in a worker thread)."""
    uploads = args.pop("uploads")
    if "training_examples" in uploads:
        args["training_file"] = _save_upload(store, uploads["training_examples"])
    if "validation_examples" in uploads:
        args["validation_file"] = _save_upload(store, uploads["validation_examples"])
    return jobs.job_view(store, jobs.start_job(store, settings=settings, **args))


def _parse_create(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FineTuneError("request body must be a JSON object")
    known = {
        "backend", "model", "dataset_id", "dataset", "training_file", "validation_file", "method",
        "hyperparameters", "suffix", "seed", "metadata", "name", "training_examples", "validation_examples",
    }
    unknown = sorted(set(body) - known)
    if unknown:
        raise FineTuneError(f"Unrecognized request argument supplied: {', '.join(unknown)}", param=unknown[0])
    method = body.get("method")
    hp = dict(body.get("hyperparameters") or {})
    if isinstance(method, dict):  # OpenAI's shape: {"type": "dpo", "dpo": {"hyperparameters": {...}}}
        mtype = method.get("type") or "supervised"
        hp.update(((method.get(mtype) or {}).get("hyperparameters")) or {})
        method = mtype
    if method is not None and not isinstance(method, str):
        raise FineTuneError("'method' must be a string or an object with 'type'", param="method")
    for key, kind in (("metadata", dict), ("hyperparameters", dict)):
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise FineTuneError(f"'{key}' must be an object", param=key)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise FineTuneError("'seed' must be an integer", param="seed")
    dataset = body.get("dataset_id") or body.get("dataset")
    training = body.get("training_file")
    if _is_dataset_id(training) and not dataset:
        dataset, training = training, None  # OpenAI's field name, holding one of our dataset ids
    for key, value in (("training_file", training), ("validation_file", body.get("validation_file"))):
        if value is not None:
            # Like evals' items_file: a request never names a file on the server. Reading it would
            # let a caller probe the server's files through the error messages.
            raise FineTuneError(
                f"{key} is not accepted over HTTP: the server does not open files named in a request. Give "
                "dataset_id (a dataset built with POST /protege/v1/datasets or `protege dataset build`; its "
                "validation split is used too), or upload the examples inline as training_examples (and "
                "validation_examples); the CLI (`protege finetune start --training-file`) takes local files.",
                param=key, code="file_path_not_allowed",
            )
    uploads: dict[str, list[dict[str, Any]]] = {}
    for key in ("training_examples", "validation_examples"):
        rows = body.get(key)
        if rows is None:
            continue
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise FineTuneError(f"'{key}' must be a non-empty array of example objects (one JSONL line each)", param=key)
        if len(rows) > MAX_UPLOADED_EXAMPLES:
            raise FineTuneError(f"'{key}' has {len(rows)} examples; at most {MAX_UPLOADED_EXAMPLES} may be uploaded inline", param=key)
        uploads[key] = rows
    if "training_examples" in uploads and dataset:
        raise FineTuneError("give a dataset id or training_examples, not both", param="training_examples")
    if "validation_examples" in uploads and "training_examples" not in uploads:
        raise FineTuneError("validation_examples go with training_examples", param="validation_examples")
    return {
        "uploads": uploads,
        "backend": body.get("backend") or "openai",
        "model": body.get("model"),
        "dataset": dataset,
        "training_file": None,
        "validation_file": None,
        "method": method,
        "hyperparameters": hp,
        "suffix": body.get("suffix"),
        "seed": seed,
        "metadata": {str(k): str(v) for k, v in (body.get("metadata") or {}).items()} or None,
        "name": body.get("name"),
    }


@router.post("")
async def create_job(request: Request, store: Any = Depends(apikit.store)) -> Any:
    body = await apikit.json_object(request)
    settings = _settings(request)
    args = _parse_create(body)
    from starlette.concurrency import run_in_threadpool

    # Starting a cloud job is a blocking SDK call, and the view reads the store: both in a thread.
    return await run_in_threadpool(_start, store, settings, args)


@router.get("/{job_id}")
def get_job(job_id: str, request: Request, store: Any = Depends(apikit.store)) -> Any:
    return jobs.job_view(store, jobs.get_job(store, job_id, settings=_settings(request)))


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, request: Request, store: Any = Depends(apikit.store)) -> Any:
    return jobs.job_view(store, jobs.cancel_job(store, job_id, settings=_settings(request)))


@router.get("/{job_id}/events")
def list_events(job_id: str, request: Request, store: Any = Depends(apikit.store), limit: int = Depends(apikit.limit)) -> Any:
    jobs.get_job(store, job_id, settings=_settings(request))
    items, more = jobs.list_events(store, job_id, after=request.query_params.get("after"), limit=limit)
    return apikit.list_envelope(items, more)


__all__ = ["router"]
