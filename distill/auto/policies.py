"""Distillation policies: which traffic to distill, when, into what, and how good it must be.

A policy is declared once (TOML ``[[policy]]`` tables, the CLI, or the HTTP API) and the worker
does the rest. Validation is strict (unknown keys are errors: a typo must not silently fall back
to a default that promotes a bad student) and every error is one line naming the field.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from protege.distill.auto.gate import build_metric, eval_run_metric
from protege.distill.datasets.builder import DatasetOptions
from protege.store import auto as store_auto


class PolicyError(ValueError):
    """A policy that cannot be used; ``param`` names the offending field (for OpenAI-style errors)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``3600``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"not a duration: {value!r} (use seconds or e.g. \"30m\", \"24h\", \"7d\")")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrafficMatch(_Strict):
    """Requests whose requested model and metadata match (all listed pairs must be present)."""

    model: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something(self) -> TrafficMatch:
        if not self.model and not self.metadata:
            raise ValueError("match needs a model or at least one metadata pair (refusing to distill all traffic)")
        return self


class Trigger(_Strict):
    """When a cycle starts: enough new traffic, and/or a schedule."""

    min_new_completions: int | None = Field(default=None, ge=1)
    min_interval: float | None = None  # seconds between cycles at least
    every: float | None = None  # run on this schedule when there is any new traffic

    _dur = field_validator("min_interval", "every", mode="before")(lambda v: None if v is None else parse_duration(v))

    @model_validator(mode="after")
    def _one(self) -> Trigger:
        if self.min_new_completions is None and self.every is None:
            raise ValueError("trigger needs min_new_completions and/or every")
        return self


CANDIDATE_BACKENDS = ("classifier", "local", "lora", "openai", "azure")


class CandidateSpec(_Strict):
    """One student that ``backend = "best"`` trains and compares (``classifier`` is the local one)."""

    backend: Literal["classifier", "local", "lora", "openai", "azure"]
    base_model: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None  # served name for local/LoRA students (default: <student>-<backend>)

    @property
    def label(self) -> str:
        return "classifier" if self.backend in ("classifier", "local") else self.backend

    @property
    def job_backend(self) -> str:
        return "local" if self.backend in ("classifier", "local") else self.backend


class StudentSpec(_Strict):
    """What to train. ``backend = "best"`` trains every one of ``candidates`` on the same data and
    keeps the one that scores best on a selection split while answering within
    ``latency_budget_ms`` (median per answer), recording why in a ``select`` decision."""

    backend: Literal["local", "openai", "azure", "lora", "best"] = "local"
    name: str | None = None  # local students: protege/<name>; defaults to the policy name
    base_model: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    suffix: str | None = None
    candidates: list[Literal["classifier", "local", "lora", "openai", "azure"] | CandidateSpec] = Field(
        default_factory=lambda: ["classifier", "lora"])
    latency_budget_ms: float | None = Field(default=None, gt=0)
    selection_metric: str | dict[str, Any] | None = None  # default: the gate's first metric
    selection_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)  # of the train split, held out to choose

    @model_validator(mode="after")
    def _base(self) -> StudentSpec:
        if self.backend in ("openai", "azure") and not self.base_model:
            raise ValueError(f"backend {self.backend!r} needs base_model (e.g. \"gpt-4.1-mini-2025-04-14\")")
        if self.backend == "lora" and not self.base_model:
            raise ValueError("backend 'lora' needs base_model (a Hugging Face model id, a local model directory or a .gguf file)")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.name):
            raise ValueError("name may contain letters, digits, '_', '.', '-' (max 64)")
        defaults = {"candidates": ["classifier", "lora"], "latency_budget_ms": None, "selection_metric": None, "selection_fraction": 0.15}
        best_only = {k for k in set(defaults) & self.model_fields_set if getattr(self, k) != defaults[k]}
        if self.backend != "best" and best_only:
            raise ValueError(f"{min(best_only)} applies to backend = \"best\" only")
        if self.backend == "best":
            labels = [c.label for c in self.candidate_specs()]
            if len(labels) < 2 or len(set(labels)) != len(labels):
                raise ValueError("backend \"best\" needs at least two different candidates (e.g. [\"classifier\", \"lora\"])")
            for c in self.candidate_specs():
                if c.job_backend in ("openai", "azure", "lora") and not c.base_model:
                    raise ValueError(f"candidate {c.label!r} needs base_model")
                if c.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", c.name):
                    raise ValueError("candidate name may contain letters, digits, '_', '.', '-' (max 64)")
            if self.selection_metric is not None:
                build_metric(self.selection_metric, resolve_secrets=False)
        return self

    def candidate_specs(self) -> list[CandidateSpec]:
        """Candidates as specs; a bare name takes this student's base_model/hyperparameters
        (for the classifier, which has neither, they are ignored)."""
        out = []
        for c in self.candidates:
            if isinstance(c, CandidateSpec):
                out.append(c)
            elif c in ("classifier", "local"):
                out.append(CandidateSpec(backend=c))
            else:
                out.append(CandidateSpec(backend=c, base_model=self.base_model, hyperparameters=dict(self.hyperparameters)))
        return out


class GateSpec(_Strict):
    """Promote only if, per metric, the 95% CI lower bound of (student - teacher) > -tolerance.

    ``metrics``: any metric of ``protege.evals`` by name (``"rougeL"``, ``"json_valid"``,
    ``"bleu:tokenize=char"``) or as a table with options (``{name = "json_schema", schema = {...}}``,
    ``{name = "judge", model = "gpt-4.1", api_key_env = "OPENAI_API_KEY"}``); see distill/auto/gate.py."""

    metrics: list[str | dict[str, Any]] = Field(default_factory=lambda: ["exact_match"], min_length=1)
    tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    min_items: int = Field(default=30, ge=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = 0

    @field_validator("metrics")
    @classmethod
    def _known(cls, value: list[Any]) -> list[Any]:
        labels, scored = [], []
        for spec in value:
            label, metric = build_metric(spec, resolve_secrets=False)
            labels.append(label)
            if eval_run_metric(spec) is not None:
                scored.append(metric.name)
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"gate metric {min(dup)!r} is listed twice (give one a 'label')")
        # The held-out split is scored once, as an eval run, whose metrics have distinct names.
        dup = {x for x in scored if scored.count(x) > 1}
        if dup:
            raise ValueError(f"gate metrics name the metric {min(dup)!r} twice (the held-out eval run scores each metric once)")
        return value


Stage = Literal["shadow", "canary", "full"]


class RolloutSpec(_Strict):
    stages: list[Stage] = Field(default_factory=lambda: ["shadow", "canary", "full"], min_length=1)
    canary_percent: float = Field(default=10.0, gt=0.0, le=100.0)
    compare_percent: float = Field(default=5.0, ge=0.0, le=100.0)  # after canary: share also sent to the teacher
    agreement_threshold: float = Field(default=0.9, ge=0.0, le=1.0)
    min_compared: int = Field(default=50, ge=1)  # compared pairs before any stage change or rollback
    comparison: Literal["exact", "label", "similarity"] = "label"
    similarity_threshold: float = Field(default=0.9, ge=0.0, le=1.0)
    student_timeout: float = Field(default=10.0, gt=0.0)

    _dur = field_validator("student_timeout", mode="before")(lambda v: parse_duration(v))

    @field_validator("stages")
    @classmethod
    def _order(cls, value: list[str]) -> list[str]:
        order = {"shadow": 0, "canary": 1, "full": 2}
        if len(set(value)) != len(value) or [order[s] for s in value] != sorted(order[s] for s in value):
            raise ValueError("stages must be distinct and in the order shadow, canary, full")
        return value


class Policy(_Strict):
    name: str
    enabled: bool = True
    match: TrafficMatch
    trigger: Trigger
    dataset: dict[str, Any] = Field(default_factory=dict)  # passed to distill.datasets.builder.DatasetOptions
    student: StudentSpec = Field(default_factory=StudentSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError("name may contain letters, digits, '_', '.', '-' (max 64) and must not be empty")
        return value

    @property
    def student_name(self) -> str:
        return self.student.name or self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _first_error(exc: ValidationError, where: str) -> PolicyError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    if err["type"] == "missing":
        msg = "required field is missing"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return PolicyError(f"{where}{': ' if where else ''}{loc + ': ' if loc else ''}{msg}{suffix}", param=loc or None)


def parse_policy(data: Any, where: str = "") -> Policy:
    """A validated :class:`Policy` from a dict (TOML table or JSON body); raises :class:`PolicyError`."""
    if not isinstance(data, dict):
        raise PolicyError(f"{where or 'policy'}: must be a table/object, not {type(data).__name__}")
    label = where or f"policy {data.get('name')!r}" if isinstance(data.get("name"), str) else (where or "policy")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, label) from None
    _check_dataset_options(policy, label)
    return policy


def _check_dataset_options(policy: Policy, label: str) -> None:
    """Dataset options must be fields of the builder's DatasetOptions."""
    known = {f.name for f in fields(DatasetOptions)}
    for key in policy.dataset:
        if key not in known:
            raise PolicyError(f"{label}: dataset.{key}: unknown dataset option (known: {', '.join(sorted(known))})", param=f"dataset.{key}")
    if policy.dataset.get("validation_fraction", 0.2) <= 0:
        raise PolicyError(f"{label}: dataset.validation_fraction: must be > 0 (the validation split is the gate's held-out set)",
                          param="dataset.validation_fraction")
    try:
        DatasetOptions.from_dict({"name": f"auto-{policy.name}", **policy.dataset})
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"{label}: dataset: {exc}", param="dataset") from None


def parse_policies_toml(text: str, source: str = "policies") -> list[Policy]:
    """Every ``[[policy]]`` table of a TOML document."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: invalid TOML: {exc}") from None
    unknown = set(doc) - {"policy"}
    if unknown:
        raise PolicyError(f"{source}: unknown top-level key {min(unknown)!r} (policies are [[policy]] tables)")
    tables = doc.get("policy")
    if not isinstance(tables, list) or not tables:
        raise PolicyError(f"{source}: no [[policy]] tables")
    policies = [parse_policy(t, where=f"{source}: policy[{i}]" + (f" ({t.get('name')})" if isinstance(t, dict) and t.get("name") else "")) for i, t in enumerate(tables)]
    names = [p.name for p in policies]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PolicyError(f"{source}: duplicate policy name {min(dup)!r}")
    return policies


def load_policies_file(path: str | Path) -> list[Policy]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read {p}: {exc.strerror or exc}") from None
    return parse_policies_toml(text, source=str(p))


# -------------------------------------------------------------------------------------------
# Stored policies


def save_policy(store: Any, policy: Policy) -> Any:
    return store_auto.put_policy(store, policy.name, policy.to_dict(), enabled=policy.enabled)


def stored_policy(row: Any) -> Policy:
    """The Policy of a stored row (re-validated: a stored spec is trusted no more than a file)."""
    import orjson

    return parse_policy(orjson.loads(row.spec), where=f"policy {row.name!r}")


def sync_policies_file(store: Any, path: str | Path) -> list[Any]:
    """Upsert every policy of a TOML file into the store (ids stay stable by name)."""
    return [save_policy(store, p) for p in load_policies_file(path)]


def policy_object(row: Any) -> dict[str, Any]:
    """The HTTP/CLI shape of a stored policy."""
    import orjson

    spec = orjson.loads(row.spec)
    return {"id": row.id, "object": "protege.policy", "name": row.name, "enabled": row.enabled,
            "created_at": row.created_at, "updated_at": row.updated_at, **{k: v for k, v in spec.items() if k not in ("name", "enabled")}}
