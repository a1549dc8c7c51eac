"""protege.distill: datasets from captured traffic, fine-tunes (cloud and local), automatic distillation.

The public names below are imported lazily, so that ``import protege.distill.<module>`` (and the
CLI) does not pay for scikit-learn or the openai SDK until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module, or (module, name in that module)
_EXPORTS: dict[str, str | tuple[str, str]] = {
    # datasets and feedback: versioned fine-tuning datasets from captured traffic
    "DatasetError": "builder", "DatasetOptions": "builder", "DatasetVersion": "builder", "build_dataset": "builder", "dataset_completion_ids": "builder", "get_dataset": "builder", "list_datasets": "builder",
    "preference_pairs": "dpo",
    "scrub_messages": "scrub", "scrub_text": "scrub",
    "assign_splits": "split",
    "ValidationReport": "validate", "validate_jsonl": "validate",
    # fine-tune backends, jobs and local students
    "BackendStatus": "backends", "FineTuneBackend": "backends", "FineTuneError": "backends", "JobSpec": "backends", "StartResult": "backends", "backend_names": "backends", "get_backend": "backends", "register_backend": "backends",
    "cancel_job": "jobs", "get_job": "jobs", "list_events": "jobs", "list_jobs": "jobs", "start_job": "jobs", "sync_all": "jobs", "sync_job": "jobs", "wait_job": "jobs",
    "LocalStudentBackend": "local_student", "TrainedStudent": "local_student", "load_student": "local_student", "train": "local_student", "train_from_files": "local_student",
    "OpenAIBackend": "openai_backend", "make_azure_client": "openai_backend", "make_openai_client": "openai_backend", "validate_training_file": "openai_backend",
    "StudentRegistry": "students",
    # automatic distillation: policies, the worker loop, the gate, routes and rollout
    "AgreementResult": "agreement", "agreement": "agreement", "get_comparator": "agreement", "online_agreement": "agreement",
    "AutoError": "auto", "Worker": "auto", "policy_status": "auto", "promote_route": ("auto", "promote"), "rollback_route": ("auto", "rollback"),
    "GateResult": "gate", "MetricComparison": "gate", "decide": "gate", "run_gate": "gate",
    "Policy": "policies", "PolicyError": "policies", "load_policies_file": "policies", "parse_policies_toml": "policies", "parse_policy": "policies",
    "Route": "routing", "StoreRouter": "routing",
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
