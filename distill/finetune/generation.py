"""Serving a LoRA student in-process: loading its artifacts, and one batching generation worker.

Why a worker thread: ``generate`` holds a CPU (or GPU) for tens to hundreds of milliseconds and must
never run on the proxy's event loop. Concurrent requests are collected for a few milliseconds and
answered by ONE left-padded ``generate`` call, which on the reference CPU gives ~1.7x the
throughput of answering them one by one (prefill dominates short answers). Greedy rows of a batch
give the same tokens as the same prompt alone.

Per row, a tracker (passed to ``generate`` as its streamer, so it sees every new token) decodes the
text so far, cuts it at a ``stop`` sequence, stops the row at its own ``max_tokens`` or EOS, and
emits text deltas for streaming clients. A stopping criterion reads the trackers' flags, so a row
that is done stops costing anything and the batch ends when every row is done.

Requests are submitted from any thread (the proxy's event loop only puts an object on a queue) and
answered through a ``concurrent.futures.Future``; streamed deltas arrive through a callback called
in the worker thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from protege.distill.finetune.base import sha256_file

log = logging.getLogger("protege.distill.finetune.generation")

DEFAULT_MAX_TOKENS = 256


class GenerationTimeout(TimeoutError):
    """The request's deadline passed before (or while) it was generated."""


@dataclass
class GenRequest:
    """One chat completion to generate (``n`` choices of the same prompt)."""

    prompt_ids: list[int]
    max_new_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    deadline: float | None = None  # time.monotonic() value
    on_delta: Callable[[int, str], None] | None = None  # (choice index, text) from the worker thread
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def group_key(self) -> tuple:
        """Requests that may share one ``generate`` call: same decoding mode and parameters.
        A seeded sampled request runs alone so that its seed alone decides its tokens."""
        if self.greedy:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", id(self))
        return ("sample", round(self.temperature, 6), round(self.top_p, 6))


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


@dataclass
class GenResult:
    choices: list[Choice]
    prompt_tokens: int
    batch_size: int = 1  # rows in the generate call that answered it (for tests and metrics)


class _Row:
    """One choice being generated: its tokens, text, and whether it is done."""

    def __init__(self, req: GenRequest, index: int, tokenizer: Any, eos_ids: set[int]) -> None:
        self.req = req
        self.index = index
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.done = False
        self.finish_reason = "length"
        self.expired = False

    def push(self, token: int) -> None:
        if self.done:
            return
        req = self.req
        if req.cancelled.is_set() or (req.deadline is not None and time.monotonic() > req.deadline):
            self.done, self.expired = True, True
            return
        if token in self.eos_ids:
            self.done, self.finish_reason = True, "stop"
            self._emit(final=True)
            return
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for s in req.stop:
            # Only the new part can complete a stop sequence (earlier text was checked already).
            at = text.find(s, max(0, len(self.text) - len(s)))
            if at != -1:
                self.text = text[:at]
                self.done, self.finish_reason = True, "stop"
                self._emit(final=True)
                return
        self.text = text
        if len(self.tokens) >= req.max_new_tokens:
            self.done, self.finish_reason = True, "length"
            self._emit(final=True)
            return
        self._emit(final=False)

    def _emit(self, final: bool) -> None:
        cb = self.req.on_delta
        if cb is None:
            return
        text = self.text
        end = len(text)
        if not final:
            # Hold back an incomplete UTF-8 character and anything that may begin a stop sequence.
            while end > self.emitted and text[end - 1] == "\ufffd":
                end -= 1
            for s in self.req.stop:
                for k in range(min(len(s) - 1, end - self.emitted), 0, -1):
                    if text[:end].endswith(s[:k]):
                        end -= k
                        break
        if end > self.emitted:
            delta = text[self.emitted : end]
            self.emitted = end
            try:
                cb(self.index, delta)
            except Exception:  # a client's queue gone: never break the batch for it
                log.debug("delta callback failed", exc_info=True)


class _Tracker:
    """``generate``'s streamer: routes each step's tokens to the rows (the first call is the prompt)."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows
        self.seen_prompt = False

    def put(self, value: Any) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        tokens = value.tolist() if hasattr(value, "tolist") else list(value)
        if tokens and isinstance(tokens[0], list):  # shape (batch, 1)
            tokens = [t[0] for t in tokens]
        for row, tok in zip(self.rows, tokens):
            row.push(int(tok))

    def end(self) -> None:
        pass


def _stopper(rows: list[_Row]) -> Any:
    import torch
    from transformers import StoppingCriteria

    class RowsDone(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.tensor([r.done for r in rows], dtype=torch.bool, device=input_ids.device)

    return RowsDone()


class BatchingGenerator:
    """A model + tokenizer answered by one worker thread that batches what arrives together.

    ``max_batch`` rows per ``generate`` call; ``window`` seconds to wait for company after the first
    request of a batch arrives (only while other requests are in flight or just arrived)."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 8, window: float = 0.004, name: str = "student") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.window = window
        self.name = name
        self.queue: queue.Queue[GenRequest | None] = queue.Queue()
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        self.device = next(model.parameters()).device
        self.batches = 0
        self.max_window = max(window, 0.05)
        self._last_rows = 0
        self._last_seconds = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"protege-gen-{name}", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------------
    def submit(self, req: GenRequest) -> Future:
        """Queue a request (cheap: safe on the event loop); its future gets a :class:`GenResult`."""
        if self._closed:
            req.future.set_exception(RuntimeError("the generator is closed"))
        else:
            self.queue.put(req)
        return req.future

    def generate(self, req: GenRequest, timeout: float | None = None) -> GenResult:
        """Blocking convenience for threads (the gate, tests)."""
        return self.submit(req).result(timeout)

    def close(self) -> None:
        self._closed = True
        self.queue.put(None)

    # -- worker ---------------------------------------------------------------------------------
    def _take(self, pending: list[GenRequest], limit: int, deadline: float | None) -> None:
        """Move queued requests into ``pending``, up to ``limit``: those arriving until ``deadline``
        (monotonic), or with None only those already queued. The close sentinel ends the taking."""
        while len(pending) < limit:
            left = 0.0 if deadline is None else deadline - time.monotonic()
            try:
                nxt = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._closed = True
                break
            pending.append(nxt)

    def _loop(self) -> None:
        pending: list[GenRequest] = []
        while True:
            if not pending:
                first = self.queue.get()
                if first is None:
                    return
                pending.append(first)
                # Wait briefly for company: concurrent clients arrive within a few ms of each other.
                # Right after a batch of several rows those clients come back at slightly different
                # times: then wait up to 5 % of the last batch's duration (capped), which costs little
                # beside a generate call and keeps the batch whole.
                wait = self.window
                if self._last_rows > 1:
                    wait = min(self.max_window, max(self.window, 0.05 * self._last_seconds))
                self._take(pending, self.max_batch, time.monotonic() + wait)
            else:  # leftovers of another group: take what else is already queued, without waiting
                self._take(pending, self.max_batch * 2, None)
            key = pending[0].group_key()
            batch, rest, rows = [], [], 0
            for r in pending:
                if r.group_key() == key and rows + r.n <= max(self.max_batch, pending[0].n):
                    batch.append(r)
                    rows += r.n
                else:
                    rest.append(r)
            pending = rest
            live = [r for r in batch if not self._expired(r)]
            if live:
                try:
                    self._run(live)
                except Exception as exc:  # the model failed: every request of the batch hears it
                    log.warning("generation failed for %s: %s", self.name, type(exc).__name__, exc_info=True)
                    for r in live:
                        if not r.future.done():
                            r.future.set_exception(exc)
            if self._closed and not pending and self.queue.empty():
                return

    @staticmethod
    def _expired(req: GenRequest) -> bool:
        if req.cancelled.is_set():
            if not req.future.done():
                req.future.set_exception(GenerationTimeout("cancelled"))
            return True
        if req.deadline is not None and time.monotonic() > req.deadline:
            if not req.future.done():
                req.future.set_exception(GenerationTimeout("the request timed out before generation started"))
            return True
        return False

    def _run(self, batch: list[GenRequest]) -> None:
        import torch

        rows = [_Row(req, i, self.tokenizer, self.eos_ids) for req in batch for i in range(req.n)]
        width = max(len(r.req.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            p = r.req.prompt_ids
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        first = batch[0]
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(r.req.max_new_tokens for r in rows),
            "pad_token_id": self.pad_id,
            "eos_token_id": sorted(self.eos_ids),
            "streamer": _Tracker(rows),
            "stopping_criteria": [_stopper(rows)],
        }
        if first.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=first.temperature, top_p=first.top_p, top_k=0)
            if first.seed is not None:
                torch.manual_seed(first.seed)
        self.batches += 1
        t0 = time.monotonic()
        with torch.inference_mode():
            self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        self._last_rows, self._last_seconds = len(rows), time.monotonic() - t0
        for req in batch:
            mine = [r for r in rows if r.req is req]
            if any(r.expired for r in mine):
                if not req.future.done():
                    req.future.set_exception(GenerationTimeout("the request timed out during generation"))
                continue
            choices = []
            for r in mine:
                r.done = True
                choices.append(Choice(r.index, r.text, r.finish_reason, len(r.tokens)))
            if not req.future.done():
                req.future.set_result(GenResult(choices, len(req.prompt_ids), len(rows)))


# --- artifacts ------------------------------------------------------------------------------


class ArtifactError(Exception):
    """A student's files are missing or do not match their recorded hashes."""


def verify_files(version_dir: Path, files: dict[str, str]) -> None:
    """Every file the manifest lists must exist with its recorded sha256 (refuse to load otherwise)."""
    for rel, digest in files.items():
        path = version_dir / rel
        if not path.is_file():
            raise ArtifactError(f"student file {rel} is missing from {version_dir}")
        if sha256_file(path) != digest:
            raise ArtifactError(f"student file {rel} does not match its recorded sha256; refusing to load it")


def _device_dtype() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def load_base(base: str | Path, dtype: Any = None) -> Any:
    """A causal LM from a model directory, a Hugging Face id, or a ``.gguf`` file (dequantised)."""
    from transformers import AutoModelForCausalLM

    base = str(base)
    if base.endswith(".gguf"):
        p = Path(base)
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=dtype)
        model.config.quantization_config = None
        return model
    return AutoModelForCausalLM.from_pretrained(base, dtype=dtype)


def load_lora_model(version_dir: Path, manifest: dict[str, Any], data_dir: Path, *, verify: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) of a LoRA student version: the merged model when saved, else the base
    (``base_dir`` in the data directory, or ``base_model`` as the user gave it) with the adapter
    merged in, so that serving pays nothing for LoRA at run time."""
    from transformers import AutoTokenizer

    version_dir = Path(version_dir)
    if verify:
        verify_files(version_dir, dict(manifest.get("files") or {}))
    device, dtype = _device_dtype()
    tok = AutoTokenizer.from_pretrained(str(version_dir / (manifest.get("tokenizer_dir") or "tokenizer")))
    tok.padding_side = "left"
    merged = manifest.get("merged_dir")
    if merged:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(version_dir / merged), dtype=dtype)
    else:
        from peft import PeftModel

        base_dir = manifest.get("base_dir")
        base = (Path(data_dir) / base_dir) if base_dir else manifest.get("base_model")
        if not base:
            raise ArtifactError("the manifest names neither merged_dir, base_dir nor base_model")
        if base_dir and not Path(base).exists():
            raise ArtifactError(f"the student's base model {base_dir} is missing from the data directory")
        model = load_base(base, dtype)
        model = PeftModel.from_pretrained(model, str(version_dir / (manifest.get("adapter_dir") or "adapter")))
        model = model.merge_and_unload()
    model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None and tok.pad_token_id is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


__all__ = [
    "ArtifactError",
    "BatchingGenerator",
    "Choice",
    "DEFAULT_MAX_TOKENS",
    "GenRequest",
    "GenResult",
    "GenerationTimeout",
    "load_base",
    "load_lora_model",
    "verify_files",
]
