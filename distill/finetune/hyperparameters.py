"""LoRA job hyperparameters: defaults that work for ~100M-1B chat models on a CPU, all overridable.

Checked in the server before a job is recorded (one clear line per mistake), then passed to the job
process as plain JSON. OpenAI's names (``n_epochs``, ``batch_size``, ``learning_rate_multiplier``,
``beta``) are accepted too, so a policy or script written for a cloud backend keeps working.
"""

from __future__ import annotations

from typing import Any

from protege.distill.finetune.interface import FineTuneError

DEFAULT_LEARNING_RATE = 1e-3  # LoRA on a 135M model: 1e-3 took SmolLM2 from 11 % to 90 % in one epoch

# name -> (type, default, check, description of the range)
_SPEC: dict[str, tuple[type, Any, Any, str]] = {
    "n_epochs": (float, "auto", lambda v: 0 < v <= 50, "(0, 50] or auto"),
    "max_steps": (int, -1, lambda v: v == -1 or v >= 1, ">= 1 (or -1: by epochs)"),
    "batch_size": (int, 8, lambda v: 1 <= v <= 1024, "1..1024"),
    "gradient_accumulation_steps": (int, 1, lambda v: 1 <= v <= 1024, "1..1024"),
    "learning_rate": (float, DEFAULT_LEARNING_RATE, lambda v: 0 < v < 1, "(0, 1)"),
    "learning_rate_multiplier": (float, None, lambda v: v > 0, "> 0"),
    "warmup_ratio": (float, 0.0, lambda v: 0 <= v < 1, "[0, 1)"),
    "weight_decay": (float, 0.0, lambda v: 0 <= v < 1, "[0, 1)"),
    "lora_r": (int, 16, lambda v: 1 <= v <= 1024, "1..1024"),
    "lora_alpha": (float, 32, lambda v: v > 0, "> 0"),
    "lora_dropout": (float, 0.05, lambda v: 0 <= v < 1, "[0, 1)"),
    "target_modules": (str, "all-linear", lambda v: bool(v.strip()), "'all-linear' or a comma-separated list of module names"),
    "max_length": (int, 512, lambda v: 8 <= v <= 131072, "8..131072"),
    "beta": (float, 0.1, lambda v: 0 < v <= 2, "(0, 2]"),
    "merge": (bool, False, lambda v: True, "true or false"),
    "save_steps": (int, 50, lambda v: v >= 1, ">= 1"),
    "logging_steps": (int, 1, lambda v: v >= 1, ">= 1"),
    "eval_generations": (int, 64, lambda v: 0 <= v <= 10000, "0..10000"),
    "eval_max_new_tokens": (int, 64, lambda v: 1 <= v <= 4096, "1..4096"),
    "seed": (int, 0, lambda v: 0 <= v <= 2147483647, "0..2147483647"),
    # Data-parallel ranks through accelerate: 0 = every CUDA device when there are several, else one
    # process; N > 1 on a machine without CUDA runs N CPU ranks (gloo), the same code path.
    "processes": (int, 0, lambda v: 0 <= v <= 64, "0..64 (0: every CUDA device)"),
}
ALIASES = {"epochs": "n_epochs", "num_train_epochs": "n_epochs", "lr": "learning_rate", "r": "lora_r", "gradient_accumulation": "gradient_accumulation_steps"}
NAMES = tuple(_SPEC)


def _coerce(key: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if kind is str:
        if isinstance(value, (list, tuple)):
            return ",".join(str(v).strip() for v in value)
        return str(value)
    if isinstance(value, bool):
        raise ValueError
    if kind is int:
        num = float(value)
        if num != int(num):
            raise ValueError
        return int(num)
    return float(value)


def validate(method: str, hp: dict[str, Any]) -> dict[str, Any]:
    """The user's values, checked and typed (defaults are not filled in: see :func:`resolve`)."""
    out: dict[str, Any] = {}
    for raw_key, value in hp.items():
        if value is None:
            continue
        key = ALIASES.get(raw_key, raw_key)
        if key not in _SPEC:
            raise FineTuneError(
                f"unknown hyperparameter {raw_key!r} for the lora backend; expected one of {', '.join(NAMES)}",
                param=f"hyperparameters.{raw_key}",
            )
        if key == "beta" and method != "dpo":
            raise FineTuneError("beta applies only to dpo jobs", param="hyperparameters.beta")
        kind, _default, check, domain = _SPEC[key]
        if value == "auto" and key in ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"):
            if key == "n_epochs":
                out[key] = "auto"
            continue  # the default is the backend's "auto"
        try:
            typed = _coerce(key, kind, value)
        except (TypeError, ValueError):
            raise FineTuneError(f"hyperparameter {raw_key} must be {domain}, not {value!r}", param=f"hyperparameters.{raw_key}") from None
        if not check(typed):
            raise FineTuneError(f"hyperparameter {raw_key}={value} is out of range ({domain})", param=f"hyperparameters.{raw_key}")
        out[key] = typed
    return out


def auto_epochs(n_examples: int) -> int:
    """Small datasets need more passes; OpenAI's 'auto' behaves alike."""
    if n_examples < 100:
        return 3
    if n_examples < 1000:
        return 2
    return 1


def resolve(hp: dict[str, Any], *, n_examples: int, seed: int | None = None) -> dict[str, Any]:
    """Every setting the job uses, defaults filled in (recorded in the manifest as trained)."""
    out = {k: spec[1] for k, spec in _SPEC.items()}
    out.update(hp)
    if out["n_epochs"] == "auto":
        out["n_epochs"] = auto_epochs(n_examples)
    if out.get("learning_rate_multiplier") is not None and "learning_rate" not in hp:
        out["learning_rate"] = DEFAULT_LEARNING_RATE * float(out["learning_rate_multiplier"])
    if seed is not None:
        out["seed"] = int(seed)
    return out


def target_modules(value: str) -> str | list[str]:
    value = value.strip()
    if value == "all-linear":
        return value
    return [part.strip() for part in value.split(",") if part.strip()]


__all__ = ["ALIASES", "DEFAULT_LEARNING_RATE", "NAMES", "auto_epochs", "resolve", "target_modules", "validate"]
