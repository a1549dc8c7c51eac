"""Store tables and queries for fine-tune jobs and local student models.

A job row is Protege's own record (``ftjob_...``) of a fine-tune run on some backend (OpenAI, Azure
OpenAI, the local scikit-learn student). The provider's own job id is kept beside it so a restarted
process can keep polling. Status changes and provider events are separate rows so that history is
append-only and survives re-polling (events are de-duplicated by their id).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, Iterable

import duckdb
import orjson
from sqlalchemy import BigInteger, Double, and_, or_
from sqlmodel import Field, SQLModel, col, select


TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    """Prefixed ids that sort by creation time (lists order by them within one second)."""
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(4)}"


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _loads(text: str | None, default: Any = None) -> Any:
    if text is None or text == "":
        return default
    return orjson.loads(text)


class FineTuneJob(SQLModel, table=True):
    __tablename__ = "finetune_jobs"

    id: str = Field(primary_key=True)
    created_at: int = Field(sa_type=BigInteger)
    updated_at: float = Field(sa_type=Double)
    finished_at: int | None = None
    backend: str
    status: str
    model: str
    method: str = "supervised"
    dataset_id: str | None = None
    training_file: str | None = None
    validation_file: str | None = None
    hyperparameters: str = "{}"
    suffix: str | None = None
    seed: int | None = None
    job_metadata: str = "{}"
    name: str | None = None
    provider_job_id: str | None = None
    provider_files: str = "{}"
    fine_tuned_model: str | None = None
    result: str = "{}"
    error: str | None = None


class FineTuneStatus(SQLModel, table=True):
    __tablename__ = "finetune_job_status"

    id: str = Field(primary_key=True)
    job_id: str = Field(index=True)
    status: str
    changed_at: float = Field(sa_type=Double)
    message: str | None = None


class FineTuneEvent(SQLModel, table=True):
    __tablename__ = "finetune_job_events"

    id: str = Field(primary_key=True)
    job_id: str = Field(index=True)
    seq: int
    created_at: int = Field(sa_type=BigInteger)
    level: str = "info"
    type: str = "message"
    message: str
    data: str | None = None


class StudentModel(SQLModel, table=True):
    __tablename__ = "local_students"

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    version: int
    created_at: int = Field(sa_type=BigInteger)
    path: str
    sha256: str
    manifest_path: str
    manifest: str = "{}"
    job_id: str | None = None


# --- jobs -------------------------------------------------------------------------------------


def job_to_dict(job: FineTuneJob) -> dict[str, Any]:
    """The row with its JSON columns decoded (the API/CLI shape is built from this)."""
    return {
        "id": job.id,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
        "backend": job.backend,
        "status": job.status,
        "model": job.model,
        "method": job.method,
        "dataset_id": job.dataset_id,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "hyperparameters": _loads(job.hyperparameters, {}),
        "suffix": job.suffix,
        "seed": job.seed,
        "metadata": _loads(job.job_metadata, {}),
        "name": job.name,
        "provider_job_id": job.provider_job_id,
        "provider_files": _loads(job.provider_files, {}),
        "fine_tuned_model": job.fine_tuned_model,
        "result": _loads(job.result, {}),
        "error": _loads(job.error, None),
    }


def create_job(
    store,
    *,
    backend: str,
    model: str,
    method: str = "supervised",
    dataset_id: str | None = None,
    training_file: str | None = None,
    validation_file: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    suffix: str | None = None,
    seed: int | None = None,
    metadata: dict[str, str] | None = None,
    name: str | None = None,
    status: str = "validating_files",
) -> dict[str, Any]:
    now = time.time()
    job = FineTuneJob(
        id=new_id("ftjob_"),
        created_at=int(now),
        updated_at=now,
        backend=backend,
        status=status,
        model=model,
        method=method,
        dataset_id=dataset_id,
        training_file=training_file,
        validation_file=validation_file,
        hyperparameters=_dumps(hyperparameters or {}),
        suffix=suffix,
        seed=seed,
        job_metadata=_dumps(metadata or {}),
        name=name,
    )
    with store.session() as s:
        s.add(job)
        s.add(FineTuneStatus(id=new_id("ftstatus_"), job_id=job.id, status=status, changed_at=now))
        s.commit()
    return job_to_dict(job)


def get_job(store, job_id: str) -> dict[str, Any] | None:
    with store.session() as s:
        job = s.get(FineTuneJob, job_id)
        return job_to_dict(job) if job is not None else None


_JSON_FIELDS = {"hyperparameters", "provider_files", "result", "error"}


def update_job(store, job_id: str, **fields: Any) -> dict[str, Any]:
    """Update columns; a new ``status`` also appends a status-history row (only when it changed)."""
    now = time.time()
    with store.session() as s:
        job = s.get(FineTuneJob, job_id)
        if job is None:
            raise KeyError(job_id)
        message = fields.pop("status_message", None)
        new_status = fields.pop("status", None)
        for key, value in fields.items():
            if key == "metadata":
                job.job_metadata = _dumps(value or {})
            elif key in _JSON_FIELDS:
                setattr(job, key, None if (key == "error" and value is None) else _dumps(value))
            else:
                setattr(job, key, value)
        if new_status is not None and new_status != job.status:
            job.status = new_status
            s.add(FineTuneStatus(id=new_id("ftstatus_"), job_id=job_id, status=new_status, changed_at=now, message=message))
            if new_status in TERMINAL_STATUSES and job.finished_at is None:
                job.finished_at = int(now)
        job.updated_at = now
        s.add(job)
        s.commit()
        return job_to_dict(job)


def list_jobs(
    store, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None, backend: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """Newest first, cursor after a job id. Returns (jobs, has_more)."""
    with store.session() as s:
        stmt = select(FineTuneJob)
        if backend:
            stmt = stmt.where(FineTuneJob.backend == backend)
        if after:
            anchor = s.get(FineTuneJob, after)
            if anchor is None:
                return [], False
            stmt = stmt.where(
                or_(
                    col(FineTuneJob.created_at) < anchor.created_at,
                    and_(col(FineTuneJob.created_at) == anchor.created_at, col(FineTuneJob.id) < anchor.id),
                )
            )
        stmt = stmt.order_by(col(FineTuneJob.created_at).desc(), col(FineTuneJob.id).desc())
        rows = [job_to_dict(j) for j in s.exec(stmt)]
    if metadata:
        rows = [r for r in rows if all(r["metadata"].get(k) == v for k, v in metadata.items())]
    return rows[:limit], len(rows) > limit


def status_history(store, job_id: str) -> list[dict[str, Any]]:
    with store.session() as s:
        stmt = select(FineTuneStatus).where(FineTuneStatus.job_id == job_id).order_by(col(FineTuneStatus.changed_at))
        return [{"status": r.status, "at": r.changed_at, "message": r.message} for r in s.exec(stmt)]


def add_events(store, job_id: str, events: Iterable[dict[str, Any]]) -> int:
    """Append events (``id`` optional); ids already recorded are skipped, so re-polling is safe."""
    events = list(events)
    if not events:
        return 0
    with store.session() as s:
        existing = {
            r for r in s.exec(select(FineTuneEvent.id).where(FineTuneEvent.job_id == job_id))
        }
        last = s.exec(
            select(FineTuneEvent.seq).where(FineTuneEvent.job_id == job_id).order_by(col(FineTuneEvent.seq).desc()).limit(1)
        ).first()
        seq = int(last or 0)
        added = 0
        for ev in events:
            eid = ev.get("id") or new_id("ftevent_")
            if eid in existing:
                continue
            existing.add(eid)
            seq += 1
            s.add(
                FineTuneEvent(
                    id=eid,
                    job_id=job_id,
                    seq=seq,
                    created_at=int(ev.get("created_at") or time.time()),
                    level=ev.get("level") or "info",
                    type=ev.get("type") or "message",
                    message=str(ev.get("message") or ""),
                    data=_dumps(ev["data"]) if ev.get("data") is not None else None,
                )
            )
            added += 1
        s.commit()
    return added


def event_ids(store, job_id: str) -> set[str]:
    """Ids of the events recorded for a job (pollers skip what they already have)."""
    with store.session() as s:
        return set(s.exec(select(FineTuneEvent.id).where(FineTuneEvent.job_id == job_id)))


def list_events(store, job_id: str, *, after: str | None = None, limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
    """Newest first (as OpenAI lists job events), cursor after an event id."""
    with store.session() as s:
        stmt = select(FineTuneEvent).where(FineTuneEvent.job_id == job_id)
        if after:
            anchor = s.get(FineTuneEvent, after)
            if anchor is None or anchor.job_id != job_id:
                return [], False
            stmt = stmt.where(col(FineTuneEvent.seq) < anchor.seq)
        stmt = stmt.order_by(col(FineTuneEvent.seq).desc()).limit(limit + 1)
        rows = list(s.exec(stmt))
    out = [
        {
            "id": r.id,
            "object": "fine_tuning.job.event",
            "created_at": r.created_at,
            "level": r.level,
            "type": r.type,
            "message": r.message,
            "data": _loads(r.data, None),
        }
        for r in rows[:limit]
    ]
    return out, len(rows) > limit


# --- local students ---------------------------------------------------------------------------


def _student_dict(r: StudentModel) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "version": r.version,
        "created_at": r.created_at,
        "path": r.path,
        "sha256": r.sha256,
        "manifest_path": r.manifest_path,
        "manifest": _loads(r.manifest, {}),
        "job_id": r.job_id,
    }


def next_student_version(store, name: str) -> int:
    with store.session() as s:
        last = s.exec(
            select(StudentModel.version).where(StudentModel.name == name).order_by(col(StudentModel.version).desc()).limit(1)
        ).first()
    return int(last or 0) + 1


def relative_to_data(store, path: str | Path) -> str:
    """``path`` as recorded: relative to the data directory when it lies inside it, so that a
    ``serve`` started from another directory (or a moved data directory) still finds it."""
    p = Path(path)
    data = Path(store.data_dir)
    for base, cand in ((data.resolve(), p.resolve()), (data, p)):
        try:
            return cand.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(path)


def resolve_artifact(store, recorded: str | Path) -> Path:
    """Where a recorded artifact path lies now. New rows are data-dir-relative; older rows hold the
    path as given when training ran (absolute, or relative to that process's working directory):
    those are tried as they are, then re-rooted at this store's data directory from their
    ``students/`` (or ``bases/``) component on."""
    p = Path(recorded)
    data = Path(store.data_dir)
    if p.is_absolute():
        if p.exists():
            return p
    else:
        inside = data / p
        if inside.exists():
            return inside
        if p.exists():
            return p
    parts = p.parts
    for anchor in ("students", "bases"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            moved = data.joinpath(*parts[i:])
            if moved.exists():
                return moved
    return p if p.is_absolute() else data / p


def record_student(
    store, *, name: str, version: int, path: str, sha256: str, manifest_path: str, manifest: dict[str, Any], job_id: str | None
) -> dict[str, Any]:
    """Record a student version; its paths are stored relative to the data directory."""
    row = StudentModel(
        id=new_id("student_"),
        name=name,
        version=version,
        created_at=int(time.time()),
        path=relative_to_data(store, path),
        sha256=sha256,
        manifest_path=relative_to_data(store, manifest_path),
        manifest=_dumps(manifest),
        job_id=job_id,
    )
    with store.session() as s:
        s.add(row)
        s.commit()
    return _student_dict(row)


def get_student(store, name: str, version: int | None = None) -> dict[str, Any] | None:
    """A student version, or the latest one when ``version`` is None."""
    with store.session() as s:
        stmt = select(StudentModel).where(StudentModel.name == name)
        if version is not None:
            stmt = stmt.where(StudentModel.version == version)
        row = s.exec(stmt.order_by(col(StudentModel.version).desc()).limit(1)).first()
        return _student_dict(row) if row is not None else None


def list_students(store, name: str | None = None) -> list[dict[str, Any]]:
    with store.session() as s:
        stmt = select(StudentModel)
        if name:
            stmt = stmt.where(StudentModel.name == name)
        return [_student_dict(r) for r in s.exec(stmt.order_by(col(StudentModel.name), col(StudentModel.version)))]


# --- which version the bare name serves -------------------------------------------------------


def student_verdicts(store) -> dict[str, dict[str, Any]]:
    """What the gate and the user said about each ``protege/<name>@v<N>``: {"protege/x@v2":
    {"gate": "promote"|"reject"|None, "pending": bool, "promoted": bool, "forced": bool}}.

    Read from the automatic loop's cycles and gate decisions (store/auto.py) and from manual
    promotions (``student_promotions``). One query per table: it runs off the event loop, when the
    registry refreshes its index."""
    cur = store.cursor()
    out: dict[str, dict[str, Any]] = {}

    def entry(model: str) -> dict[str, Any]:
        return out.setdefault(model, {"gate": None, "pending": False, "promoted": False, "forced": False})

    try:
        for model, state in cur.execute("SELECT student_model, state FROM auto_cycles WHERE student_model IS NOT NULL").fetchall():
            e = entry(model)
            if state in ("training", "evaluating", "launching", "pending", "dataset_built"):
                e["pending"] = True
            elif state == "rejected" or state == "failed":
                e["gate"] = e["gate"] or "reject"
            elif state == "promoted":
                e["gate"] = "promote"
        # The details are JSON text on both backends; parsed here (a few gate rows), not with a
        # dialect's JSON function (DuckDB's json_extract_string does not exist on PostgreSQL).
        rows = cur.execute("SELECT outcome, details FROM auto_decisions WHERE kind = 'gate' ORDER BY created_at").fetchall()
        for outcome, details in rows:
            model = orjson.loads(details).get("student_model") if details else None
            if model:
                e = entry(model)
                e["gate"] = "promote" if outcome == "promote" else "reject"
                e["pending"] = False
    except duckdb.CatalogException:  # a store without the automatic loop's tables
        pass
    for name, version, forced in cur.execute("SELECT name, version, forced FROM student_promotions ORDER BY created_at").fetchall():
        e = entry(f"protege/{name}@v{version}")
        e["promoted"] = True
        e["forced"] = e["forced"] or bool(forced)
    return out


def servable(verdict: dict[str, Any] | None) -> bool:
    """May the bare name serve this version? Promoted by hand, passed its gate, or never put to a
    gate at all (trained by hand with ``finetune start``). Not while its gate is still pending, and
    never after the gate rejected it (unless promoted by hand)."""
    if verdict is None:
        return True
    if verdict["promoted"]:
        return True
    if verdict["gate"] == "promote":
        return True
    return verdict["gate"] is None and not verdict["pending"]


def promote_student(store, name: str, version: int, *, forced: bool = False, reason: str | None = None) -> dict[str, Any]:
    """Record a manual promotion: the bare name may serve this version from now on."""
    row = {"id": new_id("promotion_"), "name": name, "version": int(version), "forced": bool(forced), "reason": reason, "created_at": time.time()}
    store.cursor().execute(
        "INSERT INTO student_promotions (id, name, version, forced, reason, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        [row["id"], name, int(version), bool(forced), reason, row["created_at"]],
    )
    return row


# --- endpoint students ------------------------------------------------------------------------

_ENDPOINT_COLUMNS = ("id", "name", "base_url", "model", "api_key_env", "timeout", "created_at", "updated_at")


def _endpoint(row: tuple) -> dict[str, Any]:
    return dict(zip(_ENDPOINT_COLUMNS, row))


def put_endpoint_student(store, *, name: str, base_url: str, model: str, api_key_env: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Register (or update) a student served by another OpenAI-compatible server. Only the name of
    the environment variable holding its key is stored."""
    now = int(time.time())
    cur = store.cursor()
    existing = get_endpoint_student(store, name)
    if existing is None:
        cur.execute(
            "INSERT INTO endpoint_students (id, name, base_url, model, api_key_env, timeout, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [new_id("endpoint_"), name, base_url, model, api_key_env, float(timeout), now, now],
        )
    else:
        cur.execute(
            "UPDATE endpoint_students SET base_url = ?, model = ?, api_key_env = ?, timeout = ?, updated_at = ? WHERE name = ?",
            [base_url, model, api_key_env, float(timeout), now, name],
        )
    return get_endpoint_student(store, name)  # type: ignore[return-value]


def get_endpoint_student(store, name: str) -> dict[str, Any] | None:
    row = store.cursor().execute(f"SELECT {', '.join(_ENDPOINT_COLUMNS)} FROM endpoint_students WHERE name = ?", [name]).fetchone()
    return _endpoint(row) if row else None


def list_endpoint_students(store) -> list[dict[str, Any]]:
    rows = store.cursor().execute(f"SELECT {', '.join(_ENDPOINT_COLUMNS)} FROM endpoint_students ORDER BY name").fetchall()
    return [_endpoint(r) for r in rows]


def delete_endpoint_student(store, name: str) -> bool:
    cur = store.cursor()
    found = cur.execute("SELECT count(*) FROM endpoint_students WHERE name = ?", [name]).fetchone()[0]
    cur.execute("DELETE FROM endpoint_students WHERE name = ?", [name])
    return bool(found)


__all__ = [
    "FineTuneEvent",
    "FineTuneJob",
    "FineTuneStatus",
    "STATUSES",
    "StudentModel",
    "TERMINAL_STATUSES",
    "add_events",
    "delete_endpoint_student",
    "get_endpoint_student",
    "list_endpoint_students",
    "promote_student",
    "put_endpoint_student",
    "relative_to_data",
    "resolve_artifact",
    "servable",
    "student_verdicts",
    "create_job",
    "event_ids",
    "get_job",
    "get_student",
    "job_to_dict",
    "list_events",
    "list_jobs",
    "list_students",
    "new_id",
    "next_student_version",
    "record_student",
    "status_history",
    "update_job",
]
