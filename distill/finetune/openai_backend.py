"""Fine-tuning on OpenAI and Azure OpenAI through the ``openai`` SDK.

Files are uploaded with purpose ``fine-tune`` and polled until processed with our own short
interval (the SDK's ``wait_for_processing`` sleeps 5 s between polls, too slow for small files and
for tests). Training files are checked locally first, with the same per-line rules OpenAI applies,
so a bad dataset fails in a second with the line number instead of after an upload. Keys come from
the usual environment variables through settings and are never stored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import openai

from protege.distill.finetune.interface import BackendStatus, FineTuneError, JobSpec, StartResult

log = logging.getLogger("protege.distill.openai")

AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
MIN_EXAMPLES = 10
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_MESSAGE_KEYS = {"role", "content", "name", "function_call", "tool_calls", "tool_call_id", "weight", "refusal"}


# --- local validation ------------------------------------------------------------------------


def _check_messages(messages: Any, where: str, need_assistant: bool) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"{where}: 'messages' must be a non-empty list"
    has_assistant = False
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"{where}: message {i} is not an object"
        if "role" not in m:
            return f"{where}: message {i} has no 'role'"
        role = m["role"]
        if role not in _ROLES:
            return f"{where}: message {i} has unrecognized role {role!r}"
        extra = set(m) - _MESSAGE_KEYS
        if extra:
            return f"{where}: message {i} has unrecognized key(s) {', '.join(sorted(extra))}"
        content = m.get("content")
        if role == "assistant":
            has_assistant = True
            if content is None and not m.get("tool_calls") and not m.get("function_call"):
                return f"{where}: assistant message {i} has no content"
            if "weight" in m and m["weight"] not in (0, 1):
                return f"{where}: assistant message {i} weight must be 0 or 1"
        elif content is None:
            return f"{where}: message {i} ({role}) has no content"
        if content is not None and not isinstance(content, (str, list)):
            return f"{where}: message {i} content must be a string or a list of content parts"
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or "type" not in part:
                    return f"{where}: message {i} has a content part without a 'type'"
    if need_assistant and not has_assistant:
        return f"{where}: example has no assistant message"
    return None


def validate_example(obj: Any, method: str, where: str) -> str | None:
    """One line's problem, or None. Same rules as OpenAI's fine-tune file checks (and the cookbook's)."""
    if not isinstance(obj, dict):
        return f"{where}: not a JSON object"
    if method == "dpo":
        inp = obj.get("input")
        if not isinstance(inp, dict):
            return f"{where}: dpo example needs an 'input' object with 'messages'"
        problem = _check_messages(inp.get("messages"), where, need_assistant=False)
        if problem:
            return problem
        for key, alt in (("preferred_output", "preferred_completion"), ("non_preferred_output", "non_preferred_completion")):
            out = obj.get(key, obj.get(alt))
            if not isinstance(out, list) or len(out) != 1 or not isinstance(out[0], dict) or out[0].get("role") != "assistant":
                return f"{where}: dpo example needs '{key}' as a list with one assistant message"
            if not isinstance(out[0].get("content"), str):
                return f"{where}: '{key}' assistant content must be a string (DPO is text-only)"
        return None
    if "messages" not in obj:
        return f"{where}: missing 'messages' list"
    return _check_messages(obj["messages"], where, need_assistant=True)


def validate_training_file(path: str | Path, method: str = "supervised", *, max_errors: int = 20) -> list[str]:
    """Per-line problems in a JSONL training file (empty list: fine)."""
    errors: list[str] = []
    count = 0
    try:
        fh = open(path, "rb")
    except OSError as exc:
        return [f"cannot read {path}: {exc.strerror}"]
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            count += 1
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                errors.append(f"line {lineno}: invalid JSON ({exc.__class__.__name__}: {str(exc)[:80]})")
            else:
                problem = validate_example(obj, method, f"line {lineno}")
                if problem:
                    errors.append(problem)
            if len(errors) >= max_errors:
                break
    if not errors and count < MIN_EXAMPLES:
        errors.append(f"file has {count} example(s); fine-tuning needs at least {MIN_EXAMPLES}")
    return errors


# --- clients -------------------------------------------------------------------------------


def make_openai_client(*, api_key: str | None = None, base_url: str | None = None, timeout: float = 60.0) -> openai.OpenAI:
    """``api_key``/``base_url`` default to OPENAI_API_KEY / OPENAI_BASE_URL as the SDK reads them."""
    return openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=2)


def make_azure_client(
    *,
    azure_endpoint: str | None = None,
    api_version: str = "2025-02-01-preview",
    api_key: str | None = None,
    auth: str = "key",
    credential: Any = None,
    token_provider: Callable[[], str] | None = None,
    timeout: float = 60.0,
) -> openai.AzureOpenAI:
    """Azure OpenAI with a key (AZURE_OPENAI_API_KEY) or Entra ID.

    Entra uses azure-identity's ``DefaultAzureCredential`` unless a credential (anything with
    ``get_token``) or a ready token provider is passed in; the provider is called per request, so
    tokens refresh without Protege ever holding one.
    """
    if auth == "entra" or token_provider is not None or credential is not None:
        if token_provider is None:
            from azure.identity import DefaultAzureCredential, get_bearer_token_provider

            token_provider = get_bearer_token_provider(credential or DefaultAzureCredential(), AZURE_SCOPE)
        return openai.AzureOpenAI(
            azure_endpoint=azure_endpoint, azure_ad_token_provider=token_provider, api_version=api_version, timeout=timeout
        )
    return openai.AzureOpenAI(azure_endpoint=azure_endpoint, api_key=api_key, api_version=api_version, timeout=timeout)


# --- what each provider fine-tunes ----------------------------------------------------------


@dataclass(frozen=True)
class AzureModel:
    """One row of Azure's fine-tuning table: the methods Azure trains it with, and how."""

    name: str
    version: str | None
    methods: tuple[str, ...]  # Azure's own: "supervised", "dpo", "reinforcement"
    global_only: bool = False  # trained only with global training (Foundry resources)


# Azure OpenAI / Microsoft Foundry fine-tuning, from MicrosoftDocs/azure-ai-docs
# articles/foundry/includes/fine-tune-supported-models.md (2026-03-05). The ONE place Protege keeps
# it: the backend's check, the error message and the README are all read from here.
AZURE_FINE_TUNING: tuple[AzureModel, ...] = (
    AzureModel("gpt-4o-mini", "2024-07-18", ("supervised",)),
    AzureModel("gpt-4o", "2024-08-06", ("supervised", "dpo")),
    AzureModel("gpt-4.1", "2025-04-14", ("supervised", "dpo")),
    AzureModel("gpt-4.1-mini", "2025-04-14", ("supervised", "dpo")),
    AzureModel("gpt-4.1-nano", "2025-04-14", ("supervised", "dpo")),
    AzureModel("o4-mini", "2025-04-16", ("reinforcement",)),
    AzureModel("gpt-5", "2025-08-07", ("reinforcement",)),  # by invitation
    AzureModel("Ministral-3B", "2411", ("supervised",), global_only=True),
    AzureModel("Qwen-32B", None, ("supervised",), global_only=True),
    AzureModel("Llama-3.3-70B-Instruct", None, ("supervised",), global_only=True),
    AzureModel("gpt-oss-20b", None, ("supervised",), global_only=True),
)
AZURE_GLOBAL_TRAINING = "GlobalStandard"  # Azure's ``trainingType`` for global training
_METHOD_NAMES = {"supervised": "SFT", "dpo": "DPO", "reinforcement": "RFT"}
# A dated version (gpt-4o-mini-2024-07-18, Ministral-3B-2411) and Azure's name for a fine-tune of
# it (base-model.ft-{jobid}), which Azure trains further with the base model's methods.
_AZURE_SUFFIX = r"(?:-(?:\d{4}-\d{2}-\d{2}|\d{4}))?(?:\.ft-[A-Za-z0-9]+)?"


def azure_model(model: str) -> AzureModel | None:
    """The Azure table row for a model id as Azure spells it (undated, dated or ``.ft-`` names; an
    OpenAI-style ``ft:<base>:...`` name resolves to its base too)."""
    if (model or "").startswith("ft:") and model.count(":") >= 2:
        model = model.split(":")[1]
    for row in sorted(AZURE_FINE_TUNING, key=lambda r: -len(r.name)):  # gpt-4o-mini before gpt-4o
        if re.fullmatch(re.escape(row.name) + _AZURE_SUFFIX, model or "", flags=re.IGNORECASE):
            return row
    return None


def azure_table_text() -> str:
    """``model (version): SFT, DPO`` lines, for errors and docs."""
    lines = []
    for row in AZURE_FINE_TUNING:
        how = ", ".join(_METHOD_NAMES[m] for m in row.methods)
        lines.append(f"{row.name}{f' ({row.version})' if row.version else ''}: {how}{', global training' if row.global_only else ''}")
    return "; ".join(lines)


def check_azure_model(model: str, method: str) -> AzureModel:
    """Refuse, before anything is uploaded, a (model, method) pair Azure does not fine-tune."""
    row = azure_model(model)
    if row is None:
        raise FineTuneError(
            f"Azure OpenAI does not fine-tune {model!r}; it fine-tunes {azure_table_text()}",
            param="model", code="unsupported_model",
        )
    if method not in row.methods:
        how = " and ".join(_METHOD_NAMES[m] for m in row.methods)
        extra = " (reinforcement fine-tuning, which Protege does not launch)" if row.methods == ("reinforcement",) else ""
        raise FineTuneError(
            f"Azure OpenAI fine-tunes {row.name} with {how} only{extra}, not {_METHOD_NAMES.get(method, method)}",
            param="method", code="unsupported_method",
        )
    return row


# OpenAI's self-serve fine-tuning: new organisations cut off 2026-05-07, no new jobs for anyone
# from 2027-01-06 (OpenAI deprecations page, notice of 2026-05-07).
OPENAI_NO_NEW_JOBS = "2027-01-06"
OPENAI_CLOSED_HINT = (
    f"OpenAI accepts no new fine-tuning jobs from {OPENAI_NO_NEW_JOBS} (self-serve fine-tuning is closing): "
    "train a student here with `--backend lora` (local), or on Azure OpenAI with `--backend azure`."
)
_CLOSED_WORDS = re.compile(r"fine[- ]?tun", re.IGNORECASE)
_CLOSED_WHY = re.compile(r"no longer|not (?:currently )?available|unavailable|deprecat|wound|winding|shut|closed|not allowed|access", re.IGNORECASE)


def _openai_closed(exc: openai.APIStatusError, message: str) -> bool:
    """A refusal of the job itself (not of its input): a 403, or a 4xx saying fine-tuning is gone."""
    if exc.status_code == 403:
        return True
    return exc.status_code in (400, 404, 410) and bool(_CLOSED_WORDS.search(message)) and bool(_CLOSED_WHY.search(message))


# --- backend ---------------------------------------------------------------------------------

_TERMINAL_FILE = {"processed", "error", "deleted"}


def _api_error(exc: openai.APIStatusError, what: str) -> FineTuneError:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message") or str(exc)
    return FineTuneError(f"{what}: {message}", param=body.get("param"), code=body.get("code"), status=exc.status_code)


class OpenAIBackend:
    """OpenAI-compatible fine-tuning (OpenAI itself, or Azure OpenAI via an ``AzureOpenAI`` client)."""

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        name: str = "openai",
        poll_interval: float = 1.0,
        file_timeout: float = 600.0,
        prevalidate: bool = True,
        training_type: str | None = None,
    ) -> None:
        """``training_type``: Azure's ``trainingType`` (``Standard``, ``GlobalStandard``, ``Developer``);
        by default Azure's own default, and global training for the models that have nothing else."""
        self.client = client
        self.name = name
        self.poll_interval = poll_interval
        self.file_timeout = file_timeout
        self.prevalidate = prevalidate
        self.training_type = training_type

    # files
    def upload(self, path: str | Path) -> str:
        """Upload and wait until processed; a file the provider rejects raises with its status_details."""
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                f = self.client.files.create(file=(path.name, fh, "application/jsonl"), purpose="fine-tune")
        except openai.APIStatusError as exc:
            raise _api_error(exc, f"upload of {path.name} failed") from None
        deadline = time.monotonic() + self.file_timeout
        while f.status not in _TERMINAL_FILE:
            if time.monotonic() > deadline:
                raise FineTuneError(f"file {f.id} ({path.name}) still {f.status} after {self.file_timeout:.0f}s", code="file_timeout")
            time.sleep(self.poll_interval)
            f = self.client.files.retrieve(f.id)
        if f.status != "processed":
            raise FineTuneError(
                f"file {path.name} ({f.id}) was rejected: {f.status_details or f.status}",
                param="training_file",
                code="invalid_training_file",
            )
        return f.id

    def start(self, spec: JobSpec) -> StartResult:
        azure = check_azure_model(spec.model, spec.method) if self.name == "azure" else None
        if self.prevalidate:
            for label, path in (("training_file", spec.training_file), ("validation_file", spec.validation_file)):
                if path is None:
                    continue
                errors = validate_training_file(path, spec.method)
                if errors:
                    raise FineTuneError(f"{label} {path} is invalid: " + "; ".join(errors), param=label, code="invalid_training_file")
        files = {"training_file": self.upload(spec.training_file)}
        if spec.validation_file:
            files["validation_file"] = self.upload(spec.validation_file)
        hp = {k: v for k, v in spec.hyperparameters.items() if v is not None}
        method: dict[str, Any] = {"type": spec.method, spec.method: {"hyperparameters": hp}}
        kwargs: dict[str, Any] = {"model": spec.model, "training_file": files["training_file"], "method": method}
        if spec.validation_file:
            kwargs["validation_file"] = files["validation_file"]
        if spec.suffix:
            kwargs["suffix"] = spec.suffix
        if spec.seed is not None:
            kwargs["seed"] = spec.seed
        if spec.metadata:
            kwargs["metadata"] = spec.metadata
        training_type = self.training_type or (AZURE_GLOBAL_TRAINING if azure is not None and azure.global_only else None)
        if azure is not None and training_type:
            kwargs["extra_body"] = {"trainingType": training_type}
        try:
            job = self.client.fine_tuning.jobs.create(**kwargs)
        except openai.APIStatusError as exc:
            if self.name == "openai":
                body = exc.body if isinstance(exc.body, dict) else {}
                message = body.get("message") or str(exc)
                if _openai_closed(exc, message):
                    # OpenAI's words unchanged, then where to go instead
                    raise FineTuneError(f"{message}\n{OPENAI_CLOSED_HINT}", param=body.get("param"),
                                        code=body.get("code") or "fine_tuning_unavailable", status=exc.status_code) from None
            raise _api_error(exc, "the provider refused the fine-tuning job") from None
        return StartResult(provider_job_id=job.id, status=job.status, files=files)

    def status(self, provider_job_id: str) -> BackendStatus:
        try:
            job = self.client.fine_tuning.jobs.retrieve(provider_job_id)
        except openai.APIStatusError as exc:
            raise _api_error(exc, f"cannot read job {provider_job_id}") from None
        return self._to_status(job)

    @staticmethod
    def _to_status(job: Any) -> BackendStatus:
        error = None
        if job.error is not None and (job.error.message or job.error.code):
            error = {"code": job.error.code, "message": job.error.message, "param": job.error.param}
        hp = None
        if job.method is not None:
            section = getattr(job.method, job.method.type, None)
            if section is not None and section.hyperparameters is not None:
                hp = section.hyperparameters.model_dump(exclude_none=True)
        return BackendStatus(
            status=job.status,
            fine_tuned_model=job.fine_tuned_model,
            error=error,
            trained_tokens=job.trained_tokens,
            hyperparameters=hp,
            result={"result_files": list(job.result_files or []), "provider_status": job.status},
        )

    def events(self, provider_job_id: str, known: set[str] | None = None) -> list[dict[str, Any]]:
        """Events oldest first. The API lists newest first, so paging stops at the first event
        already in ``known``: a poll of a long job costs one page, not its whole history."""
        events: list[dict[str, Any]] = []
        try:
            for e in self.client.fine_tuning.jobs.list_events(provider_job_id, limit=100):
                if known and e.id in known:
                    break
                events.append(e.model_dump())
        except openai.APIStatusError as exc:
            raise _api_error(exc, f"cannot read events of {provider_job_id}") from None
        events.reverse()
        return events

    def cancel(self, provider_job_id: str) -> BackendStatus:
        try:
            job = self.client.fine_tuning.jobs.cancel(provider_job_id)
        except openai.APIStatusError as exc:
            raise _api_error(exc, f"cannot cancel {provider_job_id}") from None
        return self._to_status(job)

    def checkpoints(self, provider_job_id: str) -> list[dict[str, Any]]:
        try:
            page = self.client.fine_tuning.jobs.checkpoints.list(provider_job_id, limit=100)
            return [c.model_dump() for c in page]
        except openai.APIStatusError as exc:
            raise _api_error(exc, f"cannot list checkpoints of {provider_job_id}") from None


def default_poll_interval(settings: Any = None) -> float:
    """Seconds between file/job polls: ``settings.finetune_poll_interval`` or PROTEGE_FINETUNE_POLL_INTERVAL, else 1 s."""
    value = getattr(settings, "finetune_poll_interval", None) or os.environ.get("PROTEGE_FINETUNE_POLL_INTERVAL")
    try:
        return float(value) if value else 1.0
    except ValueError:
        return 1.0


def openai_backend_from_settings(*, settings: Any = None, store: Any = None, **options: Any) -> OpenAIBackend:
    """OpenAI (or any OpenAI-compatible fine-tuning API): base URL = the configured upstream.

    options: ``client`` (ready client), ``base_url``, ``api_key``, ``poll_interval``, ``prevalidate``.
    """
    client = options.pop("client", None)
    if client is None:
        base_url = options.pop("base_url", None) or (settings.upstream if settings is not None else None)
        api_key = options.pop("api_key", None)
        if api_key is None and settings is not None and settings.upstream_api_key is not None:
            api_key = settings.upstream_api_key.get_secret_value()
        try:
            client = make_openai_client(api_key=api_key, base_url=base_url)
        except openai.OpenAIError:
            raise FineTuneError("no OpenAI API key: set OPENAI_API_KEY", code="missing_api_key", status=401) from None
    for k in ("base_url", "api_key"):
        options.pop(k, None)
    options.setdefault("poll_interval", default_poll_interval(settings))
    return OpenAIBackend(client, name="openai", **options)


def azure_backend_from_settings(*, settings: Any = None, store: Any = None, **options: Any) -> OpenAIBackend:
    """Azure OpenAI: endpoint/api version/auth from settings (AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY).

    options: ``client``, ``azure_endpoint``, ``api_key``, ``api_version``, ``auth`` (key|entra),
    ``credential``, ``token_provider``, ``poll_interval``, ``prevalidate``.
    """
    client = options.pop("client", None)
    conf = {k: options.pop(k, None) for k in ("azure_endpoint", "api_key", "api_version", "auth", "credential", "token_provider")}
    if client is None:
        endpoint = conf["azure_endpoint"] or (settings.azure_endpoint if settings is not None else None)
        if not endpoint:
            raise FineTuneError("no Azure OpenAI endpoint: set AZURE_OPENAI_ENDPOINT", param="azure_endpoint", code="missing_endpoint")
        auth = conf["auth"] or (settings.azure_auth if settings is not None else "key")
        api_key = conf["api_key"]
        if api_key is None and settings is not None and settings.azure_api_key is not None:
            api_key = settings.azure_api_key.get_secret_value()
        try:
            client = make_azure_client(
                azure_endpoint=endpoint,
                api_version=conf["api_version"] or (settings.azure_api_version if settings is not None else "2025-02-01-preview"),
                api_key=api_key,
                auth=auth,
                credential=conf["credential"],
                token_provider=conf["token_provider"],
            )
        except openai.OpenAIError:
            raise FineTuneError("no Azure OpenAI credentials: set AZURE_OPENAI_API_KEY or use Entra ID", code="missing_api_key", status=401) from None
    options.setdefault("poll_interval", default_poll_interval(settings))
    return OpenAIBackend(client, name="azure", **options)


__all__ = [
    "AZURE_FINE_TUNING",
    "AZURE_SCOPE",
    "AzureModel",
    "OPENAI_CLOSED_HINT",
    "OPENAI_NO_NEW_JOBS",
    "azure_model",
    "azure_table_text",
    "check_azure_model",
    "OpenAIBackend",
    "azure_backend_from_settings",
    "make_azure_client",
    "make_openai_client",
    "openai_backend_from_settings",
    "validate_example",
    "validate_training_file",
]
