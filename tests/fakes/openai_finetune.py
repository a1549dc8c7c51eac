"""A local stand-in for OpenAI's Files + Fine-tuning API (and Azure OpenAI's classic paths).

Real HTTP on 127.0.0.1 (aiohttp in a background thread), real shapes: file objects that go
``uploaded -> processed`` (or ``error`` with ``status_details`` naming the bad line), jobs that walk
``validating_files -> queued -> running -> succeeded`` on a fast clock with events, metrics and
checkpoints, cursor pagination, OpenAI error JSON, 401 without a key. Azure: ``/openai/...`` with
``?api-version=`` and an ``api-key`` header (or an Entra bearer token).

Usage::

    with FakeFineTuneServer(step_seconds=0.05) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test")
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_ALNUM = string.ascii_letters + string.digits
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _rid(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def _error(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": param, "code": code}}, status=status)


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    ready_at: float
    problem: str | None
    kind: str | None  # "chat" | "dpo" | None
    examples: int
    deleted: bool = False

    def obj(self, now: float) -> dict[str, Any]:
        if now < self.ready_at:
            status, details = "uploaded", None
        elif self.problem:
            status, details = "error", self.problem
        else:
            status, details = "processed", None
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": status,
            "status_details": details,
            "expires_at": None,
        }


@dataclass
class _Job:
    id: str
    body: dict[str, Any]
    created_at: int
    t0: float
    org: str
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    status: str = "validating_files"
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    phase: int = 0  # how far the event script has been emitted


def _check_messages(messages: Any, where: str, need_assistant: bool) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"{where}: 'messages' must be a non-empty array"
    assistant = False
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            return f"{where}: messages[{i}] is missing 'role'"
        if m["role"] not in _ROLES:
            return f"{where}: messages[{i}] has invalid role '{m['role']}'"
        content = m.get("content")
        if m["role"] == "assistant":
            assistant = True
            if content is None and not m.get("tool_calls") and not m.get("function_call"):
                return f"{where}: messages[{i}] assistant message is missing 'content'"
        elif content is None:
            return f"{where}: messages[{i}] is missing 'content'"
        if content is not None and not isinstance(content, (str, list)):
            return f"{where}: messages[{i}].content must be a string or an array of content parts"
    if need_assistant and not assistant:
        return f"{where}: example is missing an assistant message"
    return None


def _validate_file(content: bytes) -> tuple[str | None, str | None, int]:
    """(problem, kind, examples): file-level checks OpenAI runs when processing an upload."""
    kind = None
    n = 0
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return "File is not valid UTF-8.", None, 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        n += 1
        try:
            obj = json.loads(line)
        except ValueError:
            return f"Invalid file format. Line {lineno} is not valid JSON.", None, n
        if not isinstance(obj, dict):
            return f"Invalid file format. Line {lineno} is not a JSON object.", None, n
        this = "dpo" if "input" in obj else "chat" if "messages" in obj else None
        if this is None:
            return f"Invalid file format. Line {lineno}: expected a 'messages' key (chat) or an 'input' key (DPO).", None, n
        if kind is not None and this != kind:
            return f"Invalid file format. Line {lineno} mixes DPO and chat examples.", None, n
        kind = this
        if this == "chat":
            problem = _check_messages(obj["messages"], f"Line {lineno}", need_assistant=True)
        else:
            inp = obj.get("input")
            problem = _check_messages(inp.get("messages") if isinstance(inp, dict) else None, f"Line {lineno}", need_assistant=False)
            if problem is None:
                for key, alt in (("preferred_output", "preferred_completion"), ("non_preferred_output", "non_preferred_completion")):
                    out = obj.get(key, obj.get(alt))
                    if not (isinstance(out, list) and len(out) == 1 and isinstance(out[0], dict) and out[0].get("role") == "assistant" and isinstance(out[0].get("content"), str)):
                        problem = f"Line {lineno}: '{key}' must be an array with exactly one assistant message with string content"
                        break
        if problem:
            return f"Invalid file format. {problem}", kind, n
    if n < 10:
        return f"Training file has {n} example(s), but must have at least 10 examples.", kind, n
    return None, kind, n


_HP_RANGES = {
    "n_epochs": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 50, "an integer between 1 and 50"),
    "batch_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 256, "an integer between 1 and 256"),
    "learning_rate_multiplier": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number greater than 0"),
    "beta": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 2, "a number in (0, 2]"),
}
_HP_DONE = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8, "beta": 0.1}

# OpenAI's answer to a new job once self-serve fine-tuning has closed (2027-01-06). OpenAI has not
# published the exact text; this stands in for it with the documented facts and a 403, the status
# OpenAI already answers organisations cut off since 2026-05-07 with ("permission denied").
OPENAI_CLOSED_MESSAGE = (
    "Fine-tuning is no longer available: OpenAI stopped accepting new fine-tuning jobs on January 6, 2027. "
    "Existing fine-tuned models remain available for inference until their base models are retired."
)
OPENAI_CLOSED_CODE = "fine_tuning_unavailable"
# Azure's answer for a base model it does not fine-tune (seen from Azure OpenAI, Microsoft Q&A 2277206).
AZURE_UNSUPPORTED_MESSAGE = "The specified base model does not support fine-tuning."
AZURE_FINE_TUNABLE = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "gpt-5",
                      "Ministral-3B", "Qwen-32B", "Llama-3.3-70B-Instruct", "gpt-oss-20b")


class FakeFineTuneServer:
    """Files + fine-tuning jobs, OpenAI paths under /v1 and Azure classic paths under /openai."""

    def __init__(
        self,
        *,
        step_seconds: float = 0.05,
        api_keys: set[str] | None = None,
        org: str = "protege-test",
        running_steps: int = 3,
        new_jobs_closed: bool = False,
    ) -> None:
        """``new_jobs_closed``: answer every new OpenAI job as OpenAI does once fine-tuning has closed."""
        self.new_jobs_closed = new_jobs_closed
        self.step = step_seconds
        self.api_keys = api_keys  # None: any non-empty key is accepted
        self.org = org
        self.running_steps = running_steps
        self.files: dict[str, _File] = {}
        self.jobs: dict[str, _Job] = {}
        self.requests: list[dict[str, Any]] = []  # method, path, query, auth kind, body (json) — for assertions
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeFineTuneServer":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            self._routes(app)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-finetune", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "FakeFineTuneServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- routing
    def _routes(self, app: web.Application) -> None:
        table = [
            ("POST", "/files", self.create_file),
            ("GET", "/files", self.list_files),
            ("GET", "/files/{file_id}", self.get_file),
            ("DELETE", "/files/{file_id}", self.delete_file),
            ("GET", "/files/{file_id}/content", self.file_content),
            ("POST", "/fine_tuning/jobs", self.create_job),
            ("GET", "/fine_tuning/jobs", self.list_jobs),
            ("GET", "/fine_tuning/jobs/{job_id}", self.get_job),
            ("POST", "/fine_tuning/jobs/{job_id}/cancel", self.cancel_job),
            ("GET", "/fine_tuning/jobs/{job_id}/events", self.list_events),
            ("GET", "/fine_tuning/jobs/{job_id}/checkpoints", self.list_checkpoints),
        ]
        for method, path, handler in table:
            for prefix in ("/v1", "/openai"):
                app.router.add_route(method, prefix + path, self._guard(handler))

    def _guard(self, handler):
        async def wrapped(request: web.Request) -> web.Response:
            azure = request.path.startswith("/openai/")
            auth = request.headers.get("Authorization", "")
            bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
            key = request.headers.get("api-key", "") if azure else ""
            entry = {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "auth": "api-key" if key else "bearer" if bearer else None,
                "credential": key or bearer,
                "json": None,
            }
            self.requests.append(entry)
            if azure and "api-version" not in request.query:
                return _error(404, "Resource not found", code="404")
            presented = key or bearer
            if not presented:
                if azure:
                    return _error(401, "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API.", code="401")
                return _error(401, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", code=None)
            if self.api_keys is not None and presented not in self.api_keys:
                return _error(401, "Incorrect API key provided.", code="invalid_api_key")
            return await handler(request, entry)

        return wrapped

    # --- helpers
    def _advance(self, job: _Job) -> None:
        """Move the job along the fast clock, emitting the events a real job would."""
        if job.status in ("cancelled", "failed", "succeeded"):
            return
        elapsed = time.monotonic() - job.t0
        step = max(self.step, 1e-6)
        target = int(elapsed / step)  # phase reached by now
        total_running = self.running_steps
        while job.phase < target and job.status not in ("cancelled", "failed", "succeeded"):
            job.phase += 1
            p = job.phase
            if p == 1:
                job.status = "queued"
                self._event(job, "Files validated, moving job to queued state")
            elif p == 2:
                job.status = "running"
                self._event(job, "Fine-tuning job started")
            elif p <= 2 + total_running:
                k = p - 2
                metrics = {
                    "step": k,
                    "train_loss": round(1.5 / k, 4),
                    "train_mean_token_accuracy": round(0.6 + 0.1 * k / total_running, 4),
                    "valid_loss": round(1.6 / k, 4),
                    "valid_mean_token_accuracy": round(0.58 + 0.1 * k / total_running, 4),
                }
                self._event(job, f"Step {k}/{total_running}: training loss={metrics['train_loss']}", type_="metrics", data=metrics)
                job.checkpoints.append(
                    {
                        "id": f"ftckpt_{_rid(24)}",
                        "object": "fine_tuning.job.checkpoint",
                        "created_at": int(time.time()),
                        "fine_tuned_model_checkpoint": f"{self._model_name(job)}:ckpt-step-{k}",
                        "fine_tuning_job_id": job.id,
                        "metrics": {**metrics, "full_valid_loss": metrics["valid_loss"], "full_valid_mean_token_accuracy": metrics["valid_mean_token_accuracy"]},
                        "step_number": k,
                    }
                )
                job.checkpoints = job.checkpoints[-3:]  # only the last three epochs are kept
            else:
                job.fine_tuned_model = self._model_name(job)
                self._event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
                self._event(job, "The job has successfully completed")
                job.status = "succeeded"
                job.finished_at = int(time.time())

    def _model_name(self, job: _Job) -> str:
        base = job.body["model"]
        if base.startswith("ft:"):
            base = base.split(":")[1]
        if not hasattr(job, "_suffix8"):
            job._suffix8 = _rid(8)  # type: ignore[attr-defined]
        return f"ft:{base}:{self.org}:{job.body.get('suffix') or ''}:{job._suffix8}"  # type: ignore[attr-defined]

    def _event(self, job: _Job, message: str, *, level: str = "info", type_: str = "message", data: Any = None) -> None:
        job.events.append(
            {
                "id": f"ftevent-{_rid(24)}",
                "object": "fine_tuning.job.event",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": data if data is not None else {},
                "type": type_,
            }
        )

    def _job_obj(self, job: _Job) -> dict[str, Any]:
        self._advance(job)
        b = job.body
        method = b.get("method") or {"type": "supervised", "supervised": {"hyperparameters": b.get("hyperparameters") or {}}}
        mtype = method.get("type", "supervised")
        given = dict(((method.get(mtype) or {}).get("hyperparameters")) or {})
        keys = ["n_epochs", "batch_size", "learning_rate_multiplier"] + (["beta"] if mtype == "dpo" else [])
        resolved = {}
        for k in keys:
            v = given.get(k, "auto")
            if v == "auto" and job.status == "succeeded":
                v = _HP_DONE[k]
            resolved[k] = v
        return {
            "id": job.id,
            "object": "fine_tuning.job",
            "created_at": job.created_at,
            "error": None,
            "fine_tuned_model": job.fine_tuned_model,
            "finished_at": job.finished_at,
            "hyperparameters": {k: resolved[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
            "model": b["model"],
            "organization_id": f"org-{self.org}",
            "result_files": [],
            "seed": b.get("seed") if b.get("seed") is not None else 1234567,
            "status": job.status,
            "trained_tokens": 12345 if job.status == "succeeded" else None,
            "training_file": b["training_file"],
            "validation_file": b.get("validation_file"),
            "estimated_finish": None,
            "integrations": b.get("integrations") or [],
            "metadata": b.get("metadata"),
            "method": {"type": mtype, mtype: {"hyperparameters": resolved}},
            "user_provided_suffix": b.get("suffix"),
        }

    @staticmethod
    def _page(items: list[dict[str, Any]], request: web.Request, default_limit: int, with_ids: bool) -> web.Response:
        try:
            limit = int(request.query.get("limit", default_limit))
        except ValueError:
            return _error(400, "Invalid 'limit': expected an integer.", param="limit")
        after = request.query.get("after")
        if after:
            idx = next((i for i, it in enumerate(items) if it["id"] == after), None)
            items = items[idx + 1 :] if idx is not None else []
        page = items[:limit]
        body: dict[str, Any] = {"object": "list", "data": page, "has_more": len(items) > limit}
        if with_ids:
            body["first_id"] = page[0]["id"] if page else None
            body["last_id"] = page[-1]["id"] if page else None
        return web.json_response(body)

    # --- files
    async def create_file(self, request: web.Request, entry: dict) -> web.Response:
        try:
            form = await request.post()
        except Exception:
            return _error(400, "Expected multipart/form-data with 'purpose' and 'file'.")
        purpose = form.get("purpose")
        upload = form.get("file")
        if not purpose:
            return _error(400, "Missing required parameter: 'purpose'.", param="purpose")
        if upload is None or not hasattr(upload, "file"):
            return _error(400, "Missing required parameter: 'file'.", param="file")
        if purpose not in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
            return _error(400, f"Invalid value for 'purpose': '{purpose}'.", param="purpose")
        content = upload.file.read()
        problem = kind = None
        n = 0
        if purpose == "fine-tune":
            if not upload.filename.endswith(".jsonl"):
                return _error(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
            problem, kind, n = _validate_file(content)
        f = _File(
            id=f"file-{_rid(22)}",
            filename=upload.filename,
            purpose=str(purpose),
            content=content,
            created_at=int(time.time()),
            ready_at=time.monotonic() + self.step,
            problem=problem,
            kind=kind,
            examples=n,
        )
        self.files[f.id] = f
        return web.json_response(f.obj(time.monotonic()))

    def _file(self, file_id: str) -> _File | None:
        f = self.files.get(file_id)
        return None if f is None or f.deleted else f

    async def get_file(self, request: web.Request, entry: dict) -> web.Response:
        f = self._file(request.match_info["file_id"])
        if f is None:
            return _error(404, f"No such File object: {request.match_info['file_id']}", param="id")
        return web.json_response(f.obj(time.monotonic()))

    async def list_files(self, request: web.Request, entry: dict) -> web.Response:
        now = time.monotonic()
        items = [f.obj(now) for f in sorted(self.files.values(), key=lambda f: f.created_at, reverse=True) if not f.deleted]
        if request.query.get("purpose"):
            items = [i for i in items if i["purpose"] == request.query["purpose"]]
        return self._page(items, request, 10000, with_ids=True)

    async def delete_file(self, request: web.Request, entry: dict) -> web.Response:
        f = self._file(request.match_info["file_id"])
        if f is None:
            return _error(404, f"No such File object: {request.match_info['file_id']}", param="id")
        f.deleted = True
        return web.json_response({"id": f.id, "object": "file", "deleted": True})

    async def file_content(self, request: web.Request, entry: dict) -> web.Response:
        f = self._file(request.match_info["file_id"])
        if f is None:
            return _error(404, f"No such File object: {request.match_info['file_id']}", param="id")
        return web.Response(body=f.content, content_type="application/octet-stream")

    # --- jobs
    async def create_job(self, request: web.Request, entry: dict) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        entry["json"] = body
        if not isinstance(body, dict):
            return _error(400, "Request body must be a JSON object.")
        azure = request.path.startswith("/openai/")
        if self.new_jobs_closed and not azure:
            return _error(403, OPENAI_CLOSED_MESSAGE, code=OPENAI_CLOSED_CODE)
        for req in ("model", "training_file"):
            if not body.get(req):
                return _error(400, f"Missing required parameter: '{req}'.", param=req)
        model = body["model"]
        if azure and not model.startswith("ft:") and not any(model.lower() == m.lower() or model.lower().startswith(m.lower() + "-") or model.lower().startswith(m.lower() + ".ft-")
                             for m in AZURE_FINE_TUNABLE):
            return web.json_response({"error": {"code": "invalidPayload", "message": AZURE_UNSUPPORTED_MESSAGE}}, status=400)
        if model.startswith("ft:") and not any(j.fine_tuned_model == model for j in self.jobs.values()):
            return _error(404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found", param="model")
        method = body.get("method") or {"type": "supervised", "supervised": {"hyperparameters": body.get("hyperparameters") or {}}}
        mtype = method.get("type")
        if mtype not in ("supervised", "dpo", "reinforcement"):
            return _error(400, f"Invalid value for 'method.type': '{mtype}'.", param="method.type")
        hp = ((method.get(mtype) or {}).get("hyperparameters")) or {}
        for k, v in hp.items():
            if k not in _HP_RANGES or (k == "beta" and mtype != "dpo"):
                return _error(400, f"Unknown hyperparameter: '{k}'.", param=f"method.{mtype}.hyperparameters.{k}")
            check, desc = _HP_RANGES[k]
            if v != "auto" and not check(v):
                return _error(400, f"Invalid value for '{k}': must be 'auto' or {desc}, got {v!r}.", param=f"method.{mtype}.hyperparameters.{k}", code="invalid_hyperparameter")
        suffix = body.get("suffix")
        if suffix is not None and not (1 <= len(suffix) <= 64):
            return _error(400, "Invalid 'suffix': string must be 1 to 64 characters.", param="suffix")
        seed = body.get("seed")
        if seed is not None and not (isinstance(seed, int) and 0 <= seed <= 2147483647):
            return _error(400, "Invalid 'seed': must be an integer between 0 and 2147483647.", param="seed")
        meta = body.get("metadata")
        if meta is not None and (not isinstance(meta, dict) or len(meta) > 16):
            return _error(400, "Invalid 'metadata': expected an object with at most 16 properties.", param="metadata", code="object_above_max_properties")
        for param in ("training_file", "validation_file"):
            fid = body.get(param)
            if fid is None:
                continue
            f = self._file(fid)
            if f is None:
                return _error(400, f"invalid training_file: {fid}" if param == "training_file" else f"invalid validation_file: {fid}", param=param, code="invalid_file")
            status = f.obj(time.monotonic())["status"]
            if status == "uploaded":
                return _error(400, f"File {fid} is not ready yet; wait until it is processed.", param=param, code="file_not_ready")
            if status == "error":
                return _error(400, f"File {fid} is invalid: {f.problem}", param=param, code="invalid_training_file")
            want = "dpo" if mtype == "dpo" else "chat"
            if f.kind != want:
                return _error(
                    400,
                    f"File {fid} is in {f.kind} format, but method '{mtype}' needs {'DPO (input, preferred_output, non_preferred_output)' if want == 'dpo' else 'chat (messages)'} examples.",
                    param=param,
                    code="invalid_training_file",
                )
        job = _Job(id=f"ftjob-{_rid(24)}", body=body, created_at=int(time.time()), t0=time.monotonic(), org=self.org)
        self._event(job, f"Validating training file: {body['training_file']}")
        self.jobs[job.id] = job
        return web.json_response(self._job_obj(job))

    def _job(self, request: web.Request) -> _Job | None:
        return self.jobs.get(request.match_info["job_id"])

    def _no_job(self, request: web.Request) -> web.Response:
        return _error(404, f"Could not find fine-tune: {request.match_info['job_id']}", param="fine_tune_id", code="fine_tune_not_found")

    async def get_job(self, request: web.Request, entry: dict) -> web.Response:
        job = self._job(request)
        return self._no_job(request) if job is None else web.json_response(self._job_obj(job))

    async def list_jobs(self, request: web.Request, entry: dict) -> web.Response:
        items = [self._job_obj(j) for j in sorted(self.jobs.values(), key=lambda j: (j.created_at, j.t0), reverse=True)]
        filters = {k[9:-1]: v for k, v in request.query.items() if k.startswith("metadata[") and k.endswith("]")}
        if filters:
            items = [i for i in items if all((i.get("metadata") or {}).get(k) == v for k, v in filters.items())]
        elif request.query.get("metadata") == "null":
            items = [i for i in items if not i.get("metadata")]
        return self._page(items, request, 20, with_ids=False)

    async def cancel_job(self, request: web.Request, entry: dict) -> web.Response:
        job = self._job(request)
        if job is None:
            return self._no_job(request)
        self._advance(job)
        if job.status in ("succeeded", "failed", "cancelled"):
            return _error(400, f"Job has already completed: {job.id}", param=None, code=None)
        job.status = "cancelled"
        job.finished_at = int(time.time())
        self._event(job, "Fine-tuning job cancelled")
        return web.json_response(self._job_obj(job))

    async def list_events(self, request: web.Request, entry: dict) -> web.Response:
        return self._job_page(request, "events", 20, with_ids=False)

    async def list_checkpoints(self, request: web.Request, entry: dict) -> web.Response:
        return self._job_page(request, "checkpoints", 10, with_ids=True)

    def _job_page(self, request: web.Request, which: str, limit: int, *, with_ids: bool) -> web.Response:
        """A page of a job's events or checkpoints, newest first, as OpenAI lists them (the job advanced first)."""
        job = self._job(request)
        if job is None:
            return self._no_job(request)
        self._advance(job)
        return self._page(list(reversed(getattr(job, which))), request, limit, with_ids=with_ids)


__all__ = ["FakeFineTuneServer"]
