"""Building a versioned fine-tuning dataset from captured traffic.

Pipeline: SQL selection and exact dedupe in the store (one pass, flags only) -> stream surviving
rows in Arrow batches -> example, PII scrub, system-prompt prune, format check, tokens -> a temp
JSONL -> (optional near-dup removal) -> split -> ``train.jsonl`` / ``validation.jsonl`` + card ->
the version and its completion links in the store. Nothing holds more than a batch of rows and a
few small per-example arrays in memory, so a million captures build in well under a minute.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import time
from array import array
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pyarrow as pa
from protege.store import Store
from protege.store import datasets as ds_store
from protege.store import feedback as fb_store

from protege.distill.datasets.card import render_card
from protege.distill.datasets.dedupe import near_duplicates
from protege.distill.datasets.dpo import preference_pairs
from protege.distill.datasets.examples import assistant_message, clean_input_messages
from protege.distill.datasets.labels import LabelTally, answer_label
from protege.distill.datasets.prune import choose_prompt, sha256_text, strip_prompt
from protege.distill.datasets.scrub import scrub_messages
from protege.distill.datasets.select import DEFAULT_REFUSAL_PHRASES, selection_from
from protege.distill.datasets.split import assign_splits, random_split
from protege.distill.datasets.tokens import (
    TokenStats,
    estimate_messages,
    estimate_text,
    max_tokens_for,
    training_estimate,
)
from protege.distill.datasets.validate import MIN_EXAMPLES, check_dpo_example, check_example

LABEL_SOURCES = ("feedback", "output", "metadata")


class DatasetError(ValueError):
    """Bad build options or nothing to build from (the API answers 400, the CLI one line)."""


@dataclass
class DatasetOptions:
    """Everything that decides a dataset's content; stored with each version (JSON)."""

    name: str = "default"
    kind: str = "sft"  # "sft" (chat examples) or "dpo" (preference pairs)
    # Selection
    models: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    since: int | None = None
    until: int | None = None
    require_ok: bool = True
    exclude_students: bool = True
    finish_reasons: list[str] = field(default_factory=lambda: ["stop", "tool_calls"])
    exclude_refusals: bool = True
    refusal_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES))
    min_score: float | None = None
    exclude_rejected: bool = True
    # Cleaning
    dedupe: bool = True
    near_dedupe: bool = False
    near_threshold: float = 0.85
    scrub: bool = True
    prune_system_prompt: bool = False
    prune_min_share: float = 0.8
    # Split
    validation_fraction: float = 0.1
    seed: int = 0
    stratify: bool = False
    label_source: str = "feedback"
    label_key: str | None = None
    group_by: str | None = None
    # Tokens and cost
    base_model: str = "gpt-4o-mini-2024-07-18"
    n_epochs: int | None = None
    prices: dict[str, float] = field(default_factory=dict)
    max_tokens_per_example: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DatasetError(f"unknown dataset option(s): {', '.join(sorted(unknown))}")
        for key, value in data.items():
            _check_type(key, value, _TYPES[key])
        opts = cls(**data)
        opts.check()
        return opts

    def check(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise DatasetError("name must be a non-empty string")
        if self.kind not in ("sft", "dpo"):
            raise DatasetError(f"kind must be 'sft' or 'dpo', not {self.kind!r}")
        if not 0 <= self.validation_fraction < 1:
            raise DatasetError("validation_fraction must be in [0, 1)")
        if not 0 < self.near_threshold <= 1:
            raise DatasetError("near_threshold must be in (0, 1]")
        if not 0 < self.prune_min_share <= 1:
            raise DatasetError("prune_min_share must be in (0, 1]")
        if self.label_source not in LABEL_SOURCES:
            raise DatasetError(f"label_source must be one of {', '.join(LABEL_SOURCES)}")
        if self.label_source == "metadata" and not self.label_key:
            raise DatasetError("label_source 'metadata' needs label_key")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise DatasetError("until must be after since")


def _check_type(key: str, value: Any, kind: str) -> None:
    """JSON input (the HTTP API) is checked here, so a wrong type is a clear 400, not a crash."""
    ok = {
        "str": isinstance(value, str),
        "str?": value is None or isinstance(value, str),
        "bool": isinstance(value, bool),
        "int?": value is None or (isinstance(value, int) and not isinstance(value, bool)),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "num": isinstance(value, (int, float)) and not isinstance(value, bool),
        "num?": value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
        "strs": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "strmap": isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
        "nummap": isinstance(value, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()),
    }[kind]
    if not ok:
        raise DatasetError(f"invalid option {key!r}: expected {kind.rstrip('?')}{' or null' if kind.endswith('?') else ''}")


_TYPES = {
    "name": "str", "kind": "str", "models": "strs", "metadata": "strmap", "since": "int?", "until": "int?",
    "require_ok": "bool", "exclude_students": "bool", "finish_reasons": "strs", "exclude_refusals": "bool", "refusal_phrases": "strs",
    "min_score": "num?", "exclude_rejected": "bool", "dedupe": "bool", "near_dedupe": "bool", "near_threshold": "num",
    "scrub": "bool", "prune_system_prompt": "bool", "prune_min_share": "num", "validation_fraction": "num", "seed": "int",
    "stratify": "bool", "label_source": "str", "label_key": "str?", "group_by": "str?", "base_model": "str",
    "n_epochs": "int?", "prices": "nummap", "max_tokens_per_example": "int?",
}


@dataclass
class DatasetVersion:
    id: str
    name: str
    version: int
    kind: str
    created_at: int
    options: dict[str, Any]
    counts: dict[str, int]
    stats: dict[str, Any]
    files: dict[str, dict[str, Any]]
    system_prompt: str | None = None
    system_prompt_sha256: str | None = None

    @property
    def train_path(self) -> Path | None:
        f = self.files.get("train")
        return Path(f["path"]) if f else None

    @property
    def validation_path(self) -> Path | None:
        f = self.files.get("validation")
        return Path(f["path"]) if f else None

    @property
    def card_path(self) -> Path | None:
        f = self.files.get("card")
        return Path(f["path"]) if f else None

    @property
    def problems(self) -> list[dict[str, Any]]:
        """What validation found, one entry per kind of problem (see :func:`validation_problems`)."""
        return validation_problems(self.stats)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["object"] = "dataset"
        d["problems"] = self.problems
        return d

    @classmethod
    def from_row(cls, row: ds_store.DatasetVersionRow) -> DatasetVersion:
        return cls(
            id=row.id, name=row.name, version=row.version, kind=row.kind, created_at=row.created_at,
            options=orjson.loads(row.options), counts=orjson.loads(row.counts), stats=orjson.loads(row.stats),
            files=orjson.loads(row.files), system_prompt=row.system_prompt, system_prompt_sha256=row.system_prompt_sha256,
        )


def validation_problems(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per kind of problem validation found: a split that fails OpenAI's checks (too few
    examples, ...) and each kind of invalid example the build dropped, with its count. A build that
    found any is still recorded (its files are usable elsewhere), but must not read as plain success."""
    out: list[dict[str, Any]] = []
    for split, rep in (stats.get("validation") or {}).items():
        for key, n in sorted((rep.get("error_counts") or {}).items()):
            if key == "too_few_examples":
                msg = f"{split}: {rep.get('examples', 0)} examples; fine-tuning needs at least {MIN_EXAMPLES}"
            else:
                msg = f"{split}: {n} example(s) with {key}"
            out.append({"kind": key, "split": split, "count": int(n), "dropped": False, "message": msg})
    for key, n in sorted((stats.get("invalid_dropped") or {}).items()):
        out.append({"kind": key, "split": None, "count": int(n), "dropped": True,
                    "message": f"{n} example{'' if n == 1 else 's'} dropped: {key}"})
    return out


def get_dataset(store: Store, dataset_id: str) -> DatasetVersion | None:
    row = ds_store.get_dataset_row(store, dataset_id)
    return DatasetVersion.from_row(row) if row else None


def list_datasets(store: Store, name: str | None = None, after: str | None = None, limit: int = 100) -> tuple[list[DatasetVersion], bool]:
    rows, has_more = ds_store.list_dataset_rows(store, name=name, after=after, limit=limit)
    return [DatasetVersion.from_row(r) for r in rows], has_more


def dataset_completion_ids(store: Store, dataset_id: str, split: str | None = None) -> list[str]:
    return ds_store.dataset_completion_ids(store, dataset_id, split)


# ---------------------------------------------------------------------------------------------


class _HashingWriter:
    """Writes lines and hashes them on the way (no second read of a large file), in chunks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "wb")
        self.sha = hashlib.sha256()
        self.lines = 0
        self.bytes = 0
        self._buf: list[bytes] = []

    def write(self, line: bytes) -> None:
        self._buf.append(line)
        if len(self._buf) >= 2048:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            chunk = b"".join(self._buf)
            self.fh.write(chunk)
            self.sha.update(chunk)
            self.lines += len(self._buf)
            self.bytes += len(chunk)
            self._buf = []

    def close(self) -> dict[str, Any]:
        self._flush()
        self.fh.close()
        return {"path": str(self.path), "sha256": self.sha.hexdigest(), "bytes": self.bytes, "lines": self.lines}


def _file_info(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "lines": data.count(b"\n")}


def _label_of(opts: DatasetOptions, fb_label: str | None, metadata: str | None, answer: str) -> str | None:
    if opts.label_source == "metadata":
        if not metadata or metadata == "{}":
            return None
        value = orjson.loads(metadata).get(opts.label_key)
        return None if value is None else str(value)
    if opts.label_source == "output":
        return answer.strip()[:200] or None
    return fb_label


def build_dataset(store: Store, options: DatasetOptions, *, workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> DatasetVersion:
    """Build, write and record the next version of ``options.name``.

    ``workers``: processes converting rows (default: the CPU count, for 50k rows or more; 0 = in
    this process). The output does not depend on it.

    ``progress(rows_done, rows_total)``: called once the selection is counted (0 rows done) and
    after each batch of rows converted (SFT builds; a progress bar in the CLI).

    On any failure the version's directory is removed and nothing is recorded, so a failed build
    leaves no half-written dataset behind.
    """
    options.check()
    ds_id = ds_store.new_dataset_id()
    out_dir = store.artifact_dir("datasets", ds_id)
    try:
        if options.kind == "dpo":
            return _build_dpo(store, options, ds_id, out_dir)
        return _build_sft(store, options, ds_id, out_dir, workers, progress)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


@dataclass
class _Ctx:
    """What converting a batch needs (picklable: batches may be converted in worker processes)."""

    options: DatasetOptions
    prompt: str | None
    prompt_tokens_saved: int
    max_tokens: int


@dataclass
class _BatchResult:
    n_rows: int
    pos: list[int] = field(default_factory=list)  # row index within the batch of each example
    lines: list[bytes] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    answer_labels: list[str | None] = field(default_factory=list)  # the answer's class (None: not read), for the label distribution
    groups: list[str | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    exact: bytearray = field(default_factory=bytearray)
    texts: list[str] = field(default_factory=list)
    invalid: Counter = field(default_factory=Counter)
    scrubbed: int = 0


def _convert_batch(batch: pa.RecordBatch, ctx: _Ctx) -> _BatchResult:
    """Captured rows -> training lines: clean, correct, prune, scrub, count tokens, validate."""
    options, prompt = ctx.options, ctx.prompt
    loads, dumps = orjson.loads, orjson.dumps
    needed = ["request", "response", "fb_correction", "needs_scrub", "prompt_tokens", "completion_tokens", "seq", "id"]
    if options.label_source == "feedback":
        needed.append("fb_label")
    if options.label_source == "metadata" or options.group_by:
        needed.append("metadata")
    cols = {name: batch.column(name).to_pylist() for name in needed}
    cols.setdefault("fb_label", None)
    cols.setdefault("metadata", None)
    c_req, c_resp, c_corr, c_scrub = cols["request"], cols["response"], cols["fb_correction"], cols["needs_scrub"]
    c_pt, c_ct = cols["prompt_tokens"], cols["completion_tokens"]
    out = _BatchResult(batch.num_rows)
    label_cache: dict[str, str] = {}
    free_form = False
    for i in range(batch.num_rows):
        req = loads(c_req[i])
        resp = loads(c_resp[i])
        correction = c_corr[i]
        answer = assistant_message(resp, correction)
        if answer is None:
            out.invalid["missing_choices"] += 1
            continue
        raw_messages = req.get("messages") or []
        # Fast path: plain text messages ({role, content}, known role, non-empty string) need
        # neither cleaning nor per-message checks; most captured traffic is exactly that.
        plain = True
        for m in raw_messages:
            if type(m) is not dict or len(m) != 2 or m.get("role") not in _PLAIN_ROLES or type(m.get("content")) is not str or not m["content"]:
                plain = False
                break
        messages = list(raw_messages) if plain else clean_input_messages(raw_messages)
        pruned = False
        if prompt is not None:
            before = len(messages)
            messages = strip_prompt(messages, prompt)
            pruned = len(messages) != before
        messages.append(answer)
        if options.scrub and c_scrub[i] and scrub_messages(messages):
            out.scrubbed += 1
        example: dict[str, Any] = {"messages": messages}
        if req.get("tools"):
            example["tools"] = req["tools"]
            if "parallel_tool_calls" in req:
                example["parallel_tool_calls"] = req["parallel_tool_calls"]
        pt, ct = c_pt[i], c_ct[i]
        if pt is not None and ct is not None:
            n_tok = pt + (ct if correction is None else estimate_text(correction)) - (ctx.prompt_tokens_saved if pruned else 0)
            is_exact = correction is None and not pruned
            if pruned and n_tok < ct:
                # The upstream counts tokens differently from our ~4-characters estimate of the
                # pruned prompt: estimate what is left rather than subtracting past zero.
                n_tok = estimate_messages(messages)
        else:
            n_tok = estimate_messages(messages)
            is_exact = False
        n_tok = max(int(n_tok), 1)
        if plain and "tools" not in example and type(answer.get("content")) is str and answer["content"] and len(answer) == 2:
            issues = [] if n_tok <= ctx.max_tokens else check_example(example, 0, max_tokens=ctx.max_tokens, tokens=n_tok)
        else:
            issues = check_example(example, 0, max_tokens=ctx.max_tokens, tokens=n_tok)
        if issues:
            out.invalid[issues[0].key] += 1
            continue
        out.pos.append(i)
        out.lines.append(dumps(example) + b"\n")
        last = answer.get("content")
        out.labels.append(_label_of(
            options,
            cols["fb_label"][i] if cols["fb_label"] is not None else None,
            cols["metadata"][i] if cols["metadata"] is not None else None,
            last if isinstance(last, str) else "",
        ))
        content = answer.get("content")
        if type(content) is str and len(answer) == 2:
            # Label-like answers repeat: normalise each distinct text once per batch. Free-form
            # answers do not: past LABEL_SAMPLE examples with mostly distinct answers, the rest
            # of the batch is not read as labels (None), which costs nothing.
            label = label_cache.get(content)
            if label is None:
                if free_form:
                    label = None
                else:
                    label = label_cache[content] = answer_label(answer)
                    if len(label_cache) > LABEL_SAMPLE // 2 and len(out.answer_labels) >= LABEL_SAMPLE:
                        free_form = True
        else:
            label = answer_label(answer)
        out.answer_labels.append(label)
        out.seq.append(cols["seq"][i])
        out.ids.append(cols["id"][i])
        out.tokens.append(n_tok)
        out.exact.append(1 if is_exact else 0)
        if options.group_by:
            md = cols["metadata"][i]
            value = loads(md).get(options.group_by) if md and md != "{}" else None
            out.groups.append(None if value is None else str(value))
        if options.near_dedupe:
            out.texts.append(" ".join(m["content"] for m in messages if isinstance(m.get("content"), str)))
    return out


_PLAIN_ROLES = frozenset(("system", "user", "assistant"))

# Examples of a batch read as labels before deciding its answers are free-form (more than half
# distinct): normalising a long free-form answer costs ~10 us, a third of converting the example.
LABEL_SAMPLE = 512

# Below this many rows a process pool costs more (start-up, imports) than it saves.
PARALLEL_MIN_ROWS = 50_000


def _convert_all(batches: Iterator[pa.RecordBatch], ctx: _Ctx, workers: int | None, n_rows: int) -> Iterator[_BatchResult]:
    """Results in batch order; large builds convert batches in worker processes (Python is the
    bottleneck: one core parses and scrubs while DuckDB and the other core idle)."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if n_rows >= PARALLEL_MIN_ROWS else 0
    if workers <= 1:
        for batch in batches:
            yield _convert_batch(batch, ctx)
        return
    # spawn, not fork: the parent holds DuckDB and server threads, which fork would copy mid-state.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(_convert_batch, batch, ctx))
            if len(pending) >= workers * 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _build_sft(store: Store, options: DatasetOptions, ds_id: str, out_dir: Path, workers: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> DatasetVersion:
    version = ds_store.next_version(store, options.name)
    max_tokens = options.max_tokens_per_example or max_tokens_for(options.base_model)
    # A plain random split is decided up front (the SQL count bounds the number of examples), so
    # examples go straight to train/validation in one pass. Stratified and grouped splits and
    # near-dup removal need every example's label/group/text first: they go through a temp file.
    two_pass = options.stratify or bool(options.group_by) or options.near_dedupe
    t_start = time.perf_counter()
    cur, step_counts = ds_store.prepare_selection(store, selection_from(options))
    t_sql = time.perf_counter()
    tmp_path = out_dir / ".examples.tmp"
    train_w = _HashingWriter(out_dir / "train.jsonl")
    val_w = _HashingWriter(out_dir / "validation.jsonl")
    train_stats, val_stats = TokenStats(), TokenStats()
    label_counts: dict[str, list[int]] = {}
    tally = LabelTally()
    link_seq = array("q")
    link_id: list[str] = []
    link_val = bytearray()
    # Two-pass bookkeeping (small per-example arrays).
    labels: list[str | None] = []
    answer_labels: list[str | None] = []
    groups: list[str | None] | None = [] if options.group_by else None
    tokens = array("q")
    exact = bytearray()
    texts: list[str] | None = [] if options.near_dedupe else None
    invalid: Counter[str] = Counter()
    scrubbed = 0
    pre_split = None if two_pass else random_split(step_counts["exact_dedupe"], options.validation_fraction, options.seed)
    try:
        prompt = None
        if options.prune_system_prompt:
            text, count, total = ds_store.top_system_prompt(cur)
            prompt = choose_prompt(text, count, total, options.prune_min_share)
        ctx = _Ctx(options, prompt, estimate_text(prompt) + 3 if prompt else 0, max_tokens)
        tmp = open(tmp_path, "wb", buffering=1 << 20) if two_pass else None
        base = 0
        n_rows = step_counts["exact_dedupe"]
        if progress is not None:
            progress(0, n_rows)
        for res in _convert_all(ds_store.iter_kept_batches(cur), ctx, workers, step_counts["exact_dedupe"]):
            invalid.update(res.invalid)
            scrubbed += res.scrubbed
            link_seq.extend(res.seq)
            link_id.extend(res.ids)
            if tmp is not None:
                tmp.write(b"".join(res.lines))
                labels.extend(res.labels)
                answer_labels.extend(res.answer_labels)
                if groups is not None:
                    groups.extend(res.groups)
                tokens.extend(res.tokens)
                exact.extend(res.exact)
                if texts is not None:
                    texts.extend(res.texts)
            else:
                for k, line in enumerate(res.lines):
                    is_val = pre_split[base + res.pos[k]]
                    (val_w if is_val else train_w).write(line)
                    (val_stats if is_val else train_stats).add(res.tokens[k], bool(res.exact[k]))
                    tally.add(res.answer_labels[k], is_val)
                    label = res.labels[k]
                    if label is not None:
                        label_counts.setdefault(label, [0, 0])[is_val] += 1
                    link_val.append(is_val)
            base += res.n_rows
            if progress is not None:
                progress(base, n_rows)
        if tmp is not None:
            tmp.close()
    finally:
        ds_store.drop_selection(cur)

    t_rows = time.perf_counter()
    counts = dict(step_counts)
    counts["valid"] = len(link_id)
    if two_pass:
        n_valid = len(link_id)
        drop = near_duplicates(texts, options.near_threshold) if texts is not None else set()
        if options.near_dedupe:
            counts["near_dedupe"] = n_valid - len(drop)
        keep_idx = [i for i in range(n_valid) if i not in drop] if drop else range(n_valid)
        split = assign_splits(
            len(keep_idx),
            options.validation_fraction,
            options.seed,
            labels=[labels[i] for i in keep_idx] if options.stratify else None,
            groups=[groups[i] for i in keep_idx] if groups is not None else None,
        )
        kept_seq, kept_id = array("q"), []
        pos = 0
        with open(tmp_path, "rb", buffering=1 << 20) as fh:
            for idx, line in enumerate(fh):
                if drop and idx in drop:
                    continue
                is_val = split[pos]
                pos += 1
                (val_w if is_val else train_w).write(line)
                (val_stats if is_val else train_stats).add(tokens[idx], bool(exact[idx]))
                tally.add(answer_labels[idx], is_val)
                if labels[idx] is not None:
                    label_counts.setdefault(labels[idx], [0, 0])[is_val] += 1
                kept_seq.append(link_seq[idx])
                kept_id.append(link_id[idx])
                link_val.append(is_val)
        os.unlink(tmp_path)
        link_seq, link_id = kept_seq, kept_id
    counts["final"] = len(link_id)
    files = {"train": train_w.close()}
    val_info = val_w.close()
    if val_info["lines"]:
        files["validation"] = val_info
    else:
        os.unlink(val_info["path"])
    if counts["final"] == 0:
        raise DatasetError(
            "no completions match these options: nothing to build (counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
        )
    counts["train"] = files["train"]["lines"]
    counts["validation"] = val_info["lines"]

    validation = {}
    for split_name in files:
        n = files[split_name]["lines"]
        errors = [] if n >= MIN_EXAMPLES or split_name == "validation" else [
            {"line": 0, "key": "too_few_examples", "message": f"{n} examples; fine-tuning needs at least {MIN_EXAMPLES}"}
        ]
        validation[split_name] = {"ok": not errors, "examples": n, "error_counts": dict(Counter(e["key"] for e in errors)), "errors": errors}
    train_summary = train_stats.summary()
    stats = {
        "tokens": {"train": train_summary, "validation": val_stats.summary()},
        "training": training_estimate(train_summary["total"], train_summary["examples"], options.base_model, options.n_epochs, options.prices),
        "labels": label_counts,
        "label_distribution": tally.summary(),
        "invalid_dropped": dict(invalid),
        "validation": validation,
        "scrub": {"enabled": options.scrub, "examples_changed": scrubbed},
        "valid": all(v["ok"] for v in validation.values()),
        # Where a build spends its time (seconds), for the benchmark and for capacity planning.
        "timings": {"sql": round(t_sql - t_start, 3), "examples": round(t_rows - t_sql, 3), "split_and_files": round(time.perf_counter() - t_rows, 3)},
    }
    dv = DatasetVersion(
        id=ds_id, name=options.name, version=version, kind="sft", created_at=ds_store.now(), options=options.to_dict(),
        counts=counts, stats=stats, files=files, system_prompt=prompt,
        system_prompt_sha256=sha256_text(prompt) if prompt else None,
    )
    split_col = pa.DictionaryArray.from_arrays(pa.array(link_val, type=pa.int8()), pa.array(["train", "validation"])).cast(pa.string())
    return _finish(store, dv, out_dir, pa.table({
        "seq": pa.array(link_seq, type=pa.int64()),
        "completion_id": pa.array(link_id, type=pa.string()),
        "split": split_col,
    }))


def _finish(store: Store, dv: DatasetVersion, out_dir: Path, links: pa.Table) -> DatasetVersion:
    card = out_dir / "README.md"
    card.write_text(render_card(dv.to_dict()), encoding="utf-8")
    dv.files["card"] = _file_info(card)
    ds_store.save_dataset(
        store,
        ds_store.DatasetVersionRow(
            id=dv.id, name=dv.name, version=dv.version, kind=dv.kind, created_at=dv.created_at,
            options=ds_store.dumps(dv.options), counts=ds_store.dumps(dv.counts), stats=ds_store.dumps(dv.stats),
            files=ds_store.dumps(dv.files), system_prompt=dv.system_prompt, system_prompt_sha256=dv.system_prompt_sha256,
        ),
        links,
    )
    return dv


def _build_dpo(store: Store, options: DatasetOptions, ds_id: str, out_dir: Path) -> DatasetVersion:
    rows = fb_store.preference_rows(store, model=options.models or None, metadata=options.metadata or None)
    prompt = None
    if options.prune_system_prompt and rows:
        firsts = Counter()
        for r in rows:
            msgs = orjson.loads(r["request"]).get("messages") or []
            if msgs and isinstance(msgs[0], dict) and msgs[0].get("role") in ("system", "developer") and isinstance(msgs[0].get("content"), str):
                firsts[msgs[0]["content"]] += 1
        if firsts:
            text, count = firsts.most_common(1)[0]
            prompt = choose_prompt(text, count, len(rows), options.prune_min_share)
    pairs = preference_pairs(rows, scrub=options.scrub, system_prompt=prompt)
    counts = {"selected": len(rows), "pairs": len(pairs)}
    if not pairs:
        raise DatasetError("no preference pairs: add feedback with a correction, or accepted and rejected answers to the same input")
    invalid: Counter[str] = Counter()
    good = []
    for p in pairs:
        issues = check_dpo_example({k: v for k, v in p.items() if k != "_ids"}, 0)
        if issues:
            invalid[issues[0].key] += 1
        else:
            good.append(p)
    counts["valid"] = len(good)
    split = assign_splits(len(good), options.validation_fraction, options.seed)
    train_w = _HashingWriter(out_dir / "train.jsonl")
    val_w = _HashingWriter(out_dir / "validation.jsonl") if any(split) else None
    link_seq, link_id, link_split = [], [], []
    seq_of = {r["id"]: r["seq"] for r in rows}
    train_stats, val_stats = TokenStats(), TokenStats()
    for p, is_val in zip(good, split):
        ids = p.pop("_ids")
        (val_w if is_val else train_w).write(orjson.dumps(p) + b"\n")
        n_tok = estimate_messages(p["input"]["messages"] + p["preferred_output"] + p["non_preferred_output"])
        (val_stats if is_val else train_stats).add(n_tok, False)
        for cid in ids:
            link_seq.append(seq_of[cid])
            link_id.append(cid)
            link_split.append("validation" if is_val else "train")
    files = {"train": train_w.close()}
    if val_w is not None:
        files["validation"] = val_w.close()
    counts["train"] = files["train"]["lines"]
    counts["validation"] = files["validation"]["lines"] if val_w else 0
    train_summary = train_stats.summary()
    validation = {
        "train": {"ok": counts["train"] >= MIN_EXAMPLES, "examples": counts["train"],
                  "error_counts": {} if counts["train"] >= MIN_EXAMPLES else {"too_few_examples": 1}},
    }
    stats = {
        "tokens": {"train": train_summary, "validation": val_stats.summary()},
        "training": training_estimate(train_summary["total"], train_summary["examples"], options.base_model, options.n_epochs, options.prices),
        "invalid_dropped": dict(invalid),
        "validation": validation,
        "valid": validation["train"]["ok"],
    }
    links = pa.table({"seq": pa.array(link_seq, type=pa.int64()), "completion_id": pa.array(link_id, type=pa.string()), "split": pa.array(link_split, type=pa.string())})
    # A completion can be in several pairs; the link table records it once per split.
    links = links.group_by(["seq", "completion_id", "split"]).aggregate([])
    dv = DatasetVersion(
        id=ds_id, name=options.name, version=ds_store.next_version(store, options.name), kind="dpo",
        created_at=ds_store.now(), options=options.to_dict(), counts=counts, stats=stats, files=files,
        system_prompt=prompt, system_prompt_sha256=sha256_text(prompt) if prompt else None,
    )
    return _finish(store, dv, out_dir, links)


__all__ = [
    "DatasetError",
    "DatasetOptions",
    "DatasetVersion",
    "build_dataset",
    "dataset_completion_ids",
    "get_dataset",
    "validation_problems",
    "list_datasets",
]
