"""The fine-tune backend interface: what a backend takes (:class:`JobSpec`) and returns, and its errors.

Its own module, below the registry in :mod:`protege.distill.finetune.backends`, so that the
backends (``openai_backend``, ``local_student``, ``lora``) import the interface without importing the
registry that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

METHODS = ("supervised", "dpo")
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")


class FineTuneError(Exception):
    """A fine-tune request that cannot go ahead (bad input, provider refusal); the message is user-facing.

    ``param`` and ``code`` follow OpenAI's error object so the API can return them unchanged.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclass
class JobSpec:
    """What to train. Files are local paths (the backend uploads them where needed)."""

    model: str
    training_file: str
    validation_file: str | None = None
    method: str = "supervised"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    name: str | None = None  # local students: the served name (protege/<name>)
    job_id: str | None = None  # Protege's ftjob_ id, for backends that record artifacts against it


@dataclass
class StartResult:
    provider_job_id: str
    status: str
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class BackendStatus:
    status: str  # one of store.jobs.STATUSES
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    trained_tokens: int | None = None
    hyperparameters: dict[str, Any] | None = None


class FineTuneBackend(Protocol):
    name: str

    def start(self, spec: JobSpec) -> StartResult: ...

    def status(self, provider_job_id: str) -> BackendStatus: ...

    def events(self, provider_job_id: str, known: set[str] | None = None) -> list[dict[str, Any]]:
        """Events so far, oldest first, each with a stable ``id`` (the store de-duplicates); a backend
        may stop early at ids in ``known`` (already recorded)."""
        ...

    def cancel(self, provider_job_id: str) -> BackendStatus: ...

    def checkpoints(self, provider_job_id: str) -> list[dict[str, Any]]: ...
