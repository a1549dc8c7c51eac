"""protege.distill: datasets from captured traffic, fine-tunes (cloud and local), automatic distillation.

Four rooms, each with its own ``cli`` (Typer group) and ``api`` (FastAPI router) where it has one;
imports go one way: ``auto`` uses ``finetune`` and ``datasets``, which (like ``feedback``) use no
other room; the ``distill-acyclic`` import contract checks it:

- ``datasets``: versioned fine-tuning datasets built from captured traffic (``builder`` is the entry).
- ``feedback``: scores, labels and corrections on captured completions (the CLI and routes).
- ``finetune``: fine-tune ``backends`` (OpenAI/Azure, the classifier ``local_student``, ``lora``), the
  ``jobs`` runner, and the ``students`` registry that serves trained students to the proxy
  (``students_cli``/``students_api`` manage them).
- ``auto``: automatic distillation: ``policies`` -> ``worker`` -> ``selection``/``gate`` -> ``rollout``
  -> ``routing``/``agreement``; ``status`` for what the CLI and API show.

The public names below are imported lazily, so that ``import protege.distill`` (and the CLI) does
not pay for scikit-learn or the openai SDK until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module, or (module, name in that module)
_EXPORTS: dict[str, str | tuple[str, str]] = {
    # datasets and feedback: versioned fine-tuning datasets from captured traffic
    "DatasetError": "datasets.builder", "DatasetOptions": "datasets.builder", "DatasetVersion": "datasets.builder", "build_dataset": "datasets.builder", "dataset_completion_ids": "datasets.builder", "get_dataset": "datasets.builder", "list_datasets": "datasets.builder",
    "preference_pairs": "datasets.dpo",
    "scrub_messages": "datasets.scrub", "scrub_text": "datasets.scrub",
    "assign_splits": "datasets.split",
    "ValidationReport": "datasets.validate", "validate_jsonl": "datasets.validate",
    # fine-tune backends, jobs and local students
    "BackendStatus": "finetune.backends", "FineTuneBackend": "finetune.backends", "FineTuneError": "finetune.backends", "JobSpec": "finetune.backends", "StartResult": "finetune.backends", "backend_names": "finetune.backends", "get_backend": "finetune.backends", "register_backend": "finetune.backends",
    "cancel_job": "finetune.jobs", "get_job": "finetune.jobs", "list_events": "finetune.jobs", "list_jobs": "finetune.jobs", "start_job": "finetune.jobs", "sync_all": "finetune.jobs", "sync_job": "finetune.jobs", "wait_job": "finetune.jobs",
    "LocalStudentBackend": "finetune.local_student", "TrainedStudent": "finetune.local_student", "load_student": "finetune.local_student", "train": "finetune.local_student", "train_from_files": "finetune.local_student",
    "OpenAIBackend": "finetune.openai_backend", "make_azure_client": "finetune.openai_backend", "make_openai_client": "finetune.openai_backend", "validate_training_file": "finetune.openai_backend",
    "StudentRegistry": "finetune.students",
    # automatic distillation: policies, the worker loop, the gate, routes and rollout
    "AgreementResult": "auto.agreement", "agreement": "auto.agreement", "get_comparator": "auto.agreement", "online_agreement": "auto.agreement",
    "Worker": "auto.worker", "policy_status": "auto.status",
    "AutoError": "auto.rollout", "promote_route": ("auto.rollout", "promote"), "rollback_route": ("auto.rollout", "rollback"),
    "GateResult": "auto.gate", "MetricComparison": "auto.gate", "decide": "auto.gate", "run_gate": "auto.gate",
    "Policy": "auto.policies", "PolicyError": "auto.policies", "load_policies_file": "auto.policies", "parse_policies_toml": "auto.policies", "parse_policy": "auto.policies",
    "Route": "auto.routing", "StoreRouter": "auto.routing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'protege.distill' has no attribute {name!r}")
    module, attr = (target, name) if isinstance(target, str) else target
    value = getattr(importlib.import_module(f"protege.distill.{module}"), attr)
    globals()[name] = value
    return value
