"""Managing students by name: register endpoint students, list every student, promote a version.

One place for the rules, shared by the ``protege students`` CLI and ``/protege/v1/students``:
an endpoint student may not shadow a trained student's name; promoting a version the gate rejected
needs an explicit force.
"""

from __future__ import annotations

from typing import Any

from protege.store import jobs as store_jobs

from protege.distill.finetune.interface import FineTuneError
from protege.distill.finetune.endpoints import EndpointError, check_endpoint
from protege.distill.finetune.students import model_id, parse_model


def add_endpoint(store: Any, *, name: str, base_url: str, model: str, api_key_env: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    try:
        check_endpoint(name, base_url, model, api_key_env)
    except EndpointError as exc:
        raise FineTuneError(exc.message, param=exc.param, code=exc.code, status=400) from None
    if store_jobs.list_students(store, name):
        raise FineTuneError(f"`protege/{name}` is already a trained student; choose another name", param="name", code="name_taken", status=409)
    return endpoint_object(store_jobs.put_endpoint_student(store, name=name, base_url=base_url, model=model, api_key_env=api_key_env, timeout=timeout))


def remove_endpoint(store: Any, name: str) -> None:
    if not store_jobs.delete_endpoint_student(store, name):
        raise FineTuneError(f"no endpoint student {name!r}", param="name", code="not_found", status=404)


def endpoint_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "protege.student", "kind": "endpoint", "name": row["name"], "model": model_id(row["name"]),
            "base_url": row["base_url"], "endpoint_model": row["model"], "api_key_env": row["api_key_env"], "timeout": row["timeout"],
            "created_at": row["created_at"]}


def list_all(store: Any) -> list[dict[str, Any]]:
    """Every student: trained versions (with what the gate said, and whether the bare name serves
    it) and endpoint students."""
    verdicts = store_jobs.student_verdicts(store)
    rows = store_jobs.list_students(store)
    bare: dict[str, int] = {}
    for r in rows:
        if store_jobs.servable(verdicts.get(model_id(r["name"], r["version"]))):
            bare[r["name"]] = max(bare.get(r["name"], 0), int(r["version"]))
    out = []
    for r in rows:
        v = verdicts.get(model_id(r["name"], r["version"])) or {}
        out.append({
            "id": r["id"], "object": "protege.student", "kind": (r.get("manifest") or {}).get("kind") or "classifier", "name": r["name"],
            "version": r["version"], "model": model_id(r["name"], r["version"]), "created_at": r["created_at"], "job_id": r.get("job_id"),
            "gate": v.get("gate"), "gate_pending": bool(v.get("pending")), "promoted": bool(v.get("promoted")), "forced": bool(v.get("forced")),
            "serves_bare_name": bare.get(r["name"]) == r["version"],
        })
    out += [endpoint_object(e) for e in store_jobs.list_endpoint_students(store)]
    return out


def promote(store: Any, model: str, *, force: bool = False, reason: str | None = None) -> dict[str, Any]:
    """Let the bare name serve ``protege/<name>@vN`` (the latest such version wins)."""
    parsed = parse_model(model if model.startswith("protege/") else f"protege/{model}")
    if parsed is None or parsed[1] is None:
        raise FineTuneError(f"expected protege/<name>@v<N>, got {model!r}", param="model", code="invalid_value")
    name, version = parsed
    if store_jobs.get_student(store, name, version) is None:
        raise FineTuneError(f"The model `{model_id(name, version)}` does not exist.", param="model", code="model_not_found", status=404)
    verdict = store_jobs.student_verdicts(store).get(model_id(name, version)) or {}
    rejected = verdict.get("gate") == "reject"
    if rejected and not force:
        raise FineTuneError(
            f"{model_id(name, version)} was rejected by its gate; promote it anyway with --force (API: \"force\": true)",
            param="force", code="gate_rejected", status=409,
        )
    store_jobs.promote_student(store, name, version, forced=rejected, reason=reason)
    return {"object": "protege.student.promotion", "model": model_id(name, version), "name": name, "version": version, "forced": rejected}
