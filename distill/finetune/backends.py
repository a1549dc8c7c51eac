"""One interface for every fine-tune backend (OpenAI, Azure OpenAI, the local student).

Protege's job records (``store/jobs.py``) are backend-neutral: the job runner only ever calls
``start``/``status``/``events``/``cancel``, so adding a provider means adding a backend, not touching
the runner, the CLI or the HTTP API.
"""

from __future__ import annotations

from typing import Any, Callable

from protege.distill.finetune.hyperparameters import validate as validate_lora_hyperparameters
from protege.distill.finetune.interface import (
    HYPERPARAMETERS,
    METHODS,
    BackendStatus,
    FineTuneBackend,
    FineTuneError,
    JobSpec,
    StartResult,
)

BackendFactory = Callable[..., FineTuneBackend]
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """``factory(store=..., settings=..., **options) -> backend``; tests register fakes the same way."""
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_backend(name: str, **kwargs: Any) -> FineTuneBackend:
    _ensure_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise FineTuneError(
            f"unknown backend {name!r}; expected one of {', '.join(sorted(_REGISTRY))}", param="backend", code="invalid_backend"
        ) from None
    return factory(**kwargs)


def _ensure_builtin() -> None:
    if "openai" in _REGISTRY and "local" in _REGISTRY and "lora" in _REGISTRY:
        return
    # Imported on first use: local_student loads scikit-learn and openai_backend the openai SDK (heavy
    # optional dependencies); lora loads no torch at import (its job process does).
    from protege.distill.finetune import local_student, lora, openai_backend

    _REGISTRY.setdefault("openai", openai_backend.openai_backend_from_settings)
    _REGISTRY.setdefault("azure", openai_backend.azure_backend_from_settings)
    _REGISTRY.setdefault("local", local_student.local_backend)
    _REGISTRY.setdefault("lora", lora.lora_backend)


def validate_hyperparameters(method: str, hp: dict[str, Any], backend: str | None = None) -> dict[str, Any]:
    """Check against OpenAI's documented domains before anything is uploaded (fail fast, one clear line).
    The ``lora`` backend trains here and takes more settings (LoRA rank, max length, ...): its own check."""
    if method not in METHODS:
        raise FineTuneError(f"method must be one of {', '.join(METHODS)}, not {method!r}", param="method")
    if backend == "lora":
        return validate_lora_hyperparameters(method, hp)
    out: dict[str, Any] = {}
    for key, value in hp.items():
        if value is None:
            continue
        if key not in HYPERPARAMETERS:
            raise FineTuneError(f"unknown hyperparameter {key!r}", param=f"hyperparameters.{key}")
        if key == "beta" and method != "dpo":
            raise FineTuneError("beta applies only to dpo jobs", param="hyperparameters.beta")
        if value == "auto":
            out[key] = value
            continue
        try:
            if key in ("n_epochs", "batch_size"):
                num: float = int(value)
                if str(num) != str(value).strip() and float(value) != num:
                    raise ValueError
            else:
                num = float(value)
        except (TypeError, ValueError):
            raise FineTuneError(f"hyperparameter {key} must be a number or 'auto', not {value!r}", param=f"hyperparameters.{key}") from None
        ok = {
            "n_epochs": 1 <= num <= 50,
            "batch_size": 1 <= num <= 256,
            "learning_rate_multiplier": num > 0,
            "beta": 0 < num <= 2,
        }[key]
        if not ok:
            ranges = {"n_epochs": "1..50", "batch_size": "1..256", "learning_rate_multiplier": "> 0", "beta": "(0, 2]"}
            raise FineTuneError(f"hyperparameter {key}={value} is out of range ({ranges[key]})", param=f"hyperparameters.{key}")
        out[key] = num
    return out


__all__ = [
    "BackendStatus",
    "FineTuneBackend",
    "FineTuneError",
    "HYPERPARAMETERS",
    "JobSpec",
    "METHODS",
    "StartResult",
    "backend_names",
    "get_backend",
    "register_backend",
    "validate_hyperparameters",
]
