"""HTTP API for fine-tune jobs: ``/protege/v1/fine_tuning/jobs`` (list, start, get, cancel, events).

Shapes follow OpenAI's fine-tuning API (list envelopes, error JSON, ``after``/``limit`` cursors,
``metadata[k]=v`` filters) with Protege's own ``ftjob_`` ids. Handlers are plain ``def`` so FastAPI
runs them in its thread pool: starting or polling a cloud job is a blocking SDK call.
"""

from __future__ import annotations

import logging
from typing import Any

import openai
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from protege import apikit

from protege.distill.finetune import jobs
from protege.distill.finetune.interface import FineTuneError

log = logging.getLogger("protege.distill.finetune.api")

router = APIRouter(prefix="/protege/v1/fine_tuning/jobs", tags=["fine-tuning"])


error_response = apikit.error_response


def _from_exc(exc: Exception) -> JSONResponse:
    if isinstance(exc, FineTuneError):
        kind = "invalid_request_error" if exc.status < 500 else "api_error"
        if exc.status == 401:
            kind = "authentication_error"
        elif exc.status == 403:
            kind = "permission_error"
        return error_response(exc.status, exc.message, type_=kind, param=exc.param, code=exc.code)
    if isinstance(exc, openai.APIConnectionError):
        return error_response(502, f"the fine-tuning provider could not be reached: {exc}", type_="api_error", code="upstream_unreachable")
    log.exception("fine-tuning API error")
    return error_response(500, f"internal error: {exc.__class__.__name__}", type_="api_error")


def _ctx(request: Request) -> tuple[Any, Any]:
    """The store and settings, after the admin-key check: jobs can spend money on a cloud account,
    so when admin keys are configured only their holders may list, start or cancel them."""
    state = request.app.state
    store = getattr(state, "protege_store", None)
    settings = getattr(state, "protege_settings", None)
    denial = apikit.admin_denial(request, "Fine-tuning jobs")
    if denial is not None:
        raise FineTuneError(denial.message, status=denial.status, code=denial.code)
    if store is None:
        raise FineTuneError("the fine-tuning API has no store configured", status=500, code="no_store")
    return store, settings


def _envelope(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return apikit.list_envelope(items, has_more)


def _limit(request: Request, default: int = 20) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise FineTuneError(f"Invalid 'limit': expected an integer, got {raw!r}", param="limit") from None


@router.get("")
def list_jobs(request: Request) -> Any:
    try:
        store, _ = _ctx(request)
        meta = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
        items, more = jobs.list_jobs(store, after=request.query_params.get("after"), limit=_limit(request), metadata=meta or None)
        return _envelope([jobs.job_view(store, j, history=False) for j in items], more)
    except Exception as exc:  # noqa: BLE001 - every failure becomes OpenAI-style error JSON
        return _from_exc(exc)


def _is_dataset_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("ds_") and "/" not in value and "\\" not in value


def _parse_create(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FineTuneError("request body must be a JSON object")
    known = {
        "backend", "model", "dataset_id", "dataset", "training_file", "validation_file", "method",
        "hyperparameters", "suffix", "seed", "metadata", "name",
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
                "validation split is used too); the CLI (`protege finetune start --training-file`) takes local files.",
                param=key, code="file_path_not_allowed",
            )
    return {
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
async def create_job(request: Request) -> Any:
    try:
        store, settings = _ctx(request)
    except FineTuneError as exc:
        return _from_exc(exc)
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "We could not parse the JSON body of your request.")
    try:
        args = _parse_create(body)
        from starlette.concurrency import run_in_threadpool

        job = await run_in_threadpool(lambda: jobs.start_job(store, settings=settings, **args))
        return jobs.job_view(store, job)
    except Exception as exc:  # noqa: BLE001
        return _from_exc(exc)


@router.get("/{job_id}")
def get_job(job_id: str, request: Request) -> Any:
    try:
        store, settings = _ctx(request)
        return jobs.job_view(store, jobs.get_job(store, job_id, settings=settings))
    except Exception as exc:  # noqa: BLE001
        return _from_exc(exc)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, request: Request) -> Any:
    try:
        store, settings = _ctx(request)
        return jobs.job_view(store, jobs.cancel_job(store, job_id, settings=settings))
    except Exception as exc:  # noqa: BLE001
        return _from_exc(exc)


@router.get("/{job_id}/events")
def list_events(job_id: str, request: Request) -> Any:
    try:
        store, settings = _ctx(request)
        jobs.get_job(store, job_id, settings=settings)
        items, more = jobs.list_events(store, job_id, after=request.query_params.get("after"), limit=_limit(request))
        return _envelope(items, more)
    except Exception as exc:  # noqa: BLE001
        return _from_exc(exc)


__all__ = ["router"]
