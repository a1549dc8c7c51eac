"""Eval runs: freeze items, generate every candidate's answers, score them; resumable.

A run is created from a spec (where the items come from, which reference, candidates, metrics,
seed). Its items are copied into the store at creation, then :func:`execute_run` asks every
candidate for every item, concurrently under a semaphore, and writes each output the moment it
arrives. Executing a run again only generates the (item, candidate) pairs that have no successful
output yet, so an interrupted run (Ctrl-C, crash, SIGKILL, server restart) resumes where it stopped.
When generation is done the scores and statistics are computed once and cached on the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

from protege.store import Store
from protege.store import evals as db

from . import served
from .breaker import CandidateBreaker, CandidateUnavailable
from .generate import PASSTHROUGH_PARAMS, Candidate, CandidateError, RetryPolicy, build_request, generate_one, output_text
from .metrics import MetricSpecError, load_metrics
from .results import compute_results

log = logging.getLogger("protege.evals")

DEFAULT_METRICS = ("exact_match", "chrf")
REFERENCE_MODES = ("auto", "teacher", "gold")


class RunSpecError(ValueError):
    """A run spec that cannot run (the message is shown to the user as is)."""


@dataclass
class RunSpec:
    """What to evaluate. Exactly one item source: a completions selection or a JSONL file/list."""

    candidates: list[Candidate]
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    model: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    since: int | None = None
    until: int | None = None
    limit: int | None = None
    items_file: str | None = None
    items: list[dict[str, Any]] | None = None  # inline items (API), same shape as JSONL lines
    reference: str = "auto"  # auto: gold where one exists, else the teacher's answer
    concurrency: int = 8
    seed: int = 0
    n_resamples: int = 1000
    name: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        data = dict(data)
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise RunSpecError(f"unknown field(s) in eval spec: {', '.join(sorted(unknown))}")
        cands = data.pop("candidates", None)
        if not cands or not isinstance(cands, list):
            raise RunSpecError("an eval run needs at least one candidate")
        try:
            candidates = [c if isinstance(c, Candidate) else Candidate.from_dict(c) for c in cands]
        except (CandidateError, TypeError) as exc:
            raise RunSpecError(str(exc)) from exc
        if isinstance(data.get("metrics"), str):
            data["metrics"] = [data["metrics"]]
        spec = cls(candidates=candidates, **data)
        spec.validate()
        return spec

    def validate(self) -> None:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise RunSpecError(f"candidate names must be unique, got {names}")
        if self.reference not in REFERENCE_MODES:
            raise RunSpecError(f"reference must be one of {', '.join(REFERENCE_MODES)}, not {self.reference!r}")
        if not self.metrics:
            raise RunSpecError("an eval run needs at least one metric")
        try:
            load_metrics(self.metrics)
        except MetricSpecError as exc:
            raise RunSpecError(str(exc)) from exc
        for key in ("concurrency", "n_resamples"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RunSpecError(f"{key} must be a positive integer")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise RunSpecError("seed must be an integer")
        for key in ("since", "until"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), int):
                raise RunSpecError(f"{key} must be Unix seconds (an integer)")
        if not isinstance(self.metadata, dict) or not all(isinstance(v, str) for v in self.metadata.values()):
            raise RunSpecError("metadata must be an object of string values")
        if self.items is not None and not isinstance(self.items, list):
            raise RunSpecError("items must be a list of objects")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise RunSpecError("limit must be a positive integer")
        if self.items_file and self.items is not None:
            raise RunSpecError("give items_file or items, not both")
        if (self.items_file or self.items is not None) and (self.model or self.metadata or self.since or self.until):
            raise RunSpecError("--items cannot be combined with --model/--metadata/--since/--until")

    def to_dict(self) -> dict[str, Any]:
        """The spec as stored with the run (inline items are stored as items, not here)."""
        return {
            "candidates": [c.to_dict() for c in self.candidates], "metrics": list(self.metrics), "model": self.model,
            "metadata": dict(self.metadata), "since": self.since, "until": self.until, "limit": self.limit,
            "items_file": self.items_file, "reference": self.reference, "concurrency": self.concurrency,
            "seed": self.seed, "n_resamples": self.n_resamples, "name": self.name,
        }


# ---------------------------------------------------------------------------------------------
# Items


def _request_params(request: dict[str, Any]) -> dict[str, Any]:
    return {k: request[k] for k in PASSTHROUGH_PARAMS if request.get(k) is not None}


def _gold_from(metadata: dict[str, Any]) -> str | None:
    for key in ("gold", "reference"):
        if isinstance(metadata.get(key), str) and metadata[key] != "":
            return metadata[key]
    return None


def _choose_reference(item: dict[str, Any], gold: str | None, mode: str) -> None:
    if mode != "teacher" and gold is not None:
        item["reference"], item["reference_kind"] = gold, "gold"
    elif mode != "gold" and item.get("teacher_output") is not None:
        item["reference"], item["reference_kind"] = item["teacher_output"], "teacher"
    else:
        item["reference"], item["reference_kind"] = None, "none"


def items_from_completions(records: list[dict[str, Any]], mode: str = "auto") -> list[dict[str, Any]]:
    """Eval items from captured completions (:func:`protege.store.evals.select_completions`)."""
    items = []
    for rec in records:
        request, response = rec["request"], rec["response"]
        message = ((response.get("choices") or [{}])[0] or {}).get("message")
        item = {
            "source_id": rec["id"],
            "messages": request.get("messages") or [],
            "params": _request_params(request),
            "teacher_output": output_text(message),
            "teacher_model": response.get("model") or rec.get("model") or rec.get("model_requested"),
            "teacher_prompt_tokens": rec.get("prompt_tokens"),
            "teacher_completion_tokens": rec.get("completion_tokens"),
            "teacher_latency_ms": rec.get("latency_ms"),
            "metadata": rec.get("metadata") or {},
        }
        gold = rec.get("correction") if rec.get("correction") is not None else _gold_from(item["metadata"])
        _choose_reference(item, gold, mode)
        items.append(item)
    return items


def item_from_line(obj: Any, where: str, mode: str = "auto") -> dict[str, Any]:
    """One eval item from a JSONL line: ``{"messages", "reference"?, "metadata"?}``, a chat
    fine-tuning line whose last message is the (teacher's) assistant answer, or a stored
    ``chat.completion`` object carrying its ``messages`` (or ``request.messages``)."""
    if not isinstance(obj, dict):
        raise RunSpecError(f"{where}: expected a JSON object")
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RunSpecError(f"{where}: metadata must be an object")
    request = obj.get("request") if isinstance(obj.get("request"), dict) else {}
    messages = obj.get("messages") or obj.get("input") or request.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and m.get("role") for m in messages):
        raise RunSpecError(f"{where}: needs a non-empty 'messages' list of {{role, content}} objects")
    messages = list(messages)
    teacher_output, usage = None, obj.get("usage") or {}
    if obj.get("choices"):
        teacher_output = output_text(((obj["choices"] or [{}])[0] or {}).get("message"))
    elif messages[-1].get("role") == "assistant":
        teacher_output = output_text(messages.pop())
    if isinstance(obj.get("teacher"), str):
        teacher_output = obj["teacher"]
    if not messages:
        raise RunSpecError(f"{where}: no input messages before the assistant answer")
    gold = obj.get("reference")
    if gold is not None and not isinstance(gold, str):
        gold = orjson.dumps(gold).decode()
    gold = gold if gold is not None else _gold_from(metadata)
    item = {
        "source_id": obj.get("id") or where,
        "messages": messages,
        "params": _request_params(request or obj),
        "teacher_output": teacher_output,
        "teacher_model": obj.get("model") or request.get("model"),
        "teacher_prompt_tokens": usage.get("prompt_tokens"),
        "teacher_completion_tokens": usage.get("completion_tokens"),
        "teacher_latency_ms": obj.get("latency_ms"),
        "metadata": metadata,
    }
    _choose_reference(item, gold, mode)
    if item["reference"] is None:
        raise RunSpecError(f"{where}: no reference (give 'reference', or the teacher's answer as the last assistant message)")
    return item


def items_from_jsonl(path: str | Path, mode: str = "auto") -> tuple[list[dict[str, Any]], str]:
    """Items from a JSONL file, with the file's sha256 (recorded in the run for reproducibility)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise RunSpecError(f"cannot read {p}: {exc.strerror or exc}") from exc
    items = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise RunSpecError(f"{p}:{n}: not valid JSON ({exc})") from exc
        items.append(item_from_line(obj, f"{p.name}:{n}", mode))
    return items, hashlib.sha256(raw).hexdigest()


def collect_items(store: Store, spec: RunSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The spec's items and a description of their source."""
    if spec.items_file:
        items, digest = items_from_jsonl(spec.items_file, spec.reference)
        source = {"type": "jsonl", "path": str(spec.items_file), "sha256": digest}
    elif spec.items is not None:
        items = [item_from_line(obj, f"items[{i}]", spec.reference) for i, obj in enumerate(spec.items)]
        source = {"type": "inline"}
    else:
        records = db.select_completions(
            store, model=spec.model, metadata=spec.metadata, since=spec.since, until=spec.until, limit=spec.limit
        )
        items = items_from_completions(records, spec.reference)
        source = {"type": "completions", "model": spec.model, "metadata": spec.metadata, "since": spec.since,
                  "until": spec.until, "limit": spec.limit}
    if spec.limit is not None:
        items = items[: spec.limit]
    if spec.reference == "gold":
        items = [it for it in items if it["reference_kind"] == "gold"]
    else:
        items = [it for it in items if it["reference"] is not None]
    if not items:
        raise RunSpecError("no items matched (check --model/--metadata/--since/--until, or the items file)")
    return items, source


def create_run(store: Store, spec: RunSpec) -> dict[str, Any]:
    """Validate the spec, freeze its items into the store and return the queued run object."""
    spec.validate()
    for cand in spec.candidates:  # fail before freezing items when a key variable or the server is missing
        try:
            cand.api_key()
            served.resolve(cand, store.path)
        except CandidateError as exc:
            raise RunSpecError(str(exc)) from exc
    items, source = collect_items(store, spec)
    stored = spec.to_dict()
    stored["source"] = source
    run = db.create_run(store, stored, items, name=spec.name)
    return run_object(store, run)


# ---------------------------------------------------------------------------------------------
# Execution


ProgressFn = Callable[[int, int], None]


async def execute_run(
    store: Store, run_id: str, *, progress: ProgressFn | None = None, policy: RetryPolicy | None = None,
    concurrency: int | None = None, score_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Generate the missing outputs, then score. Safe to call again on any run (resume).

    ``progress(done, total)`` follows generation, ``score_progress(done, total)`` the scoring after it.
    A candidate that cannot answer at all (:mod:`.breaker`) stops the run: it is marked failed with the
    reason and :class:`~.breaker.CandidateUnavailable` is raised; what was generated is kept.

    Every store call runs in a worker thread (``asyncio.to_thread``): this coroutine shares its event
    loop with the HTTP API (and, under ``protege serve``, the proxy), which must not wait on the disk."""
    run = await asyncio.to_thread(db.get_run, store, run_id)
    if run is None:
        raise RunSpecError(f"no eval run {run_id}")
    spec = run["spec"]
    try:
        candidates = [served.resolve(Candidate.from_dict(c), store.path) for c in spec["candidates"]]
        clients = {c.name: c.client() for c in candidates}
    except CandidateError as exc:
        await asyncio.to_thread(db.update_run, store, run_id, status="failed",
                                error={"code": "invalid_candidate", "message": str(exc)})
        raise RunSpecError(str(exc)) from exc
    await asyncio.to_thread(db.update_run, store, run_id, status="in_progress",
                            started_at=run["started_at"] or int(time.time()), error=None, completed_at=None)
    items = await asyncio.to_thread(db.list_items, store, run_id)
    done = await asyncio.to_thread(db.done_pairs, store, run_id)
    todo = [(item, cand) for item in items for cand in candidates if (item["id"], cand.name) not in done]
    total = len(items) * len(candidates)
    finished = total - len(todo)
    if progress:
        progress(finished, total)
    sem = asyncio.Semaphore(concurrency or int(spec.get("concurrency") or 8))

    def saved(n: int) -> None:
        nonlocal finished
        finished += n
        if progress:
            progress(finished, total)

    sink = _OutputSink(store, run_id, saved)
    breakers = {c.name: CandidateBreaker(c.name, str(clients[c.name].base_url).rstrip("/")) for c in candidates}

    async def work(item: dict[str, Any], cand: Candidate) -> None:
        async with sem:
            body = build_request(cand, item["messages"], item["params"])
            gen = await generate_one(clients[cand.name], body, policy, breakers[cand.name])
        sink.put({"item_id": item["id"], "candidate": cand.name, "status": gen.status, "output": gen.output,
                  "model": gen.model, "latency_ms": gen.latency_ms, "prompt_tokens": gen.prompt_tokens,
                  "completion_tokens": gen.completion_tokens, "attempts": gen.attempts, "error": gen.error})

    try:
        tasks = [asyncio.ensure_future(work(item, cand)) for item, cand in todo]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await sink.close()  # what has arrived is kept
            raise
        await sink.close()
        results = await asyncio.to_thread(compute_results, store, run_id, progress=score_progress)
    except CandidateUnavailable as exc:
        log.warning("eval run %s stopped: %s", run_id, exc)
        await asyncio.to_thread(db.update_run, store, run_id, status="failed",
                                error={"code": exc.code, "message": str(exc)})
        raise
    except (asyncio.CancelledError, KeyboardInterrupt):
        # The thread finishes the write even if this task is cancelled again while awaiting it.
        await asyncio.to_thread(db.update_run, store, run_id, status="canceled",
                                error={"code": "interrupted", "message": "interrupted; resume to continue"})
        raise
    except Exception as exc:
        log.exception("eval run %s failed", run_id)
        await asyncio.to_thread(db.update_run, store, run_id, status="failed",
                                error={"code": "run_failed", "message": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        for client in clients.values():
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass
    await asyncio.to_thread(db.update_run, store, run_id, status="completed", completed_at=int(time.time()),
                            results=results)
    return await asyncio.to_thread(_current_run_object, store, run_id)


def _current_run_object(store: Store, run_id: str) -> dict[str, Any]:
    return run_object(store, db.get_run(store, run_id))  # type: ignore[arg-type]


class _OutputSink:
    """Outputs are written by one writer task, as they arrive, in group commits: a file-backed
    DuckDB commit costs milliseconds (a WAL sync), so while one batch is written the next outputs
    queue up and go in the next transaction. A crash loses at most the batch being written."""

    def __init__(self, store: Store, run_id: str, on_saved: Callable[[int], None]) -> None:
        self.store, self.run_id, self.on_saved = store, run_id, on_saved
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._loop())

    def put(self, row: dict[str, Any]) -> None:
        self.queue.put_nowait(row)

    async def _loop(self) -> None:
        done = False
        while not done:
            row = await self.queue.get()
            if row is None:
                return
            batch = [row]
            while not self.queue.empty():
                nxt = self.queue.get_nowait()
                if nxt is None:
                    done = True
                    break
                batch.append(nxt)
            await asyncio.to_thread(db.save_outputs, self.store, self.run_id, batch)
            self.on_saved(len(batch))

    async def close(self) -> None:
        if not self.task.done():
            self.queue.put_nowait(None)
        await asyncio.shield(self.task)


def run_sync(store: Store, run_id: str, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(execute_run(store, run_id, **kwargs))


def run_object(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a run (API and ``--json``): no cached statistics, keys never present."""
    spec = run["spec"]
    return {
        "object": "protege.eval.run",
        "id": run["id"],
        "name": run["name"],
        "status": run["status"],
        "created_at": run["created_at"],
        "started_at": run["started_at"],
        "completed_at": run["completed_at"],
        "candidates": [{"name": c["name"], "model": c["model"], "base_url": c.get("base_url"),
                        "azure_endpoint": c.get("azure_endpoint"), "system_prompt": c.get("system_prompt")}
                       for c in spec.get("candidates", [])],
        "metrics": spec.get("metrics", []),
        "reference": spec.get("reference"),
        "seed": spec.get("seed"),
        "source": spec.get("source"),
        "n_items": run["n_items"],
        "result_counts": db.progress(store, run["id"]),
        "candidate_counts": _candidate_counts(store, run),
        "error": run["error"],
    }


def _candidate_counts(store: Store, run: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per candidate: answered, errored (a failed call: not a score), pending, total (= items)."""
    found = db.progress_by_candidate(store, run["id"])
    out = {}
    for c in run["spec"].get("candidates", []):
        got = found.get(c["name"], {"answered": 0, "errored": 0})
        out[c["name"]] = {**got, "pending": max(run["n_items"] - got["answered"] - got["errored"], 0), "total": run["n_items"]}
    return out


__all__ = ["DEFAULT_METRICS", "RunSpec", "RunSpecError", "collect_items", "create_run", "execute_run",
           "item_from_line", "items_from_completions", "items_from_jsonl", "run_object", "run_sync"]
