"""A loaded LoRA student answering OpenAI chat completions: sync (threads), async, and streamed.

The async paths never block the event loop: the prompt is rendered and tokenized (sub-millisecond
CPU), the request goes on the batching generator's queue, and the answer comes back through a
future; streamed text arrives from the worker thread via ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

from protege.distill.finetune.chat import ChatRequestError, build_completion, chunk, completion_id, gen_request, parse_params, parse_tool_calls, template_messages
from protege.distill.finetune.generation import BatchingGenerator, GenerationTimeout, GenResult, load_lora_model


class StudentTimeout(Exception):
    """OpenAI-shaped: the student did not answer within the timeout."""

    status = 504
    code = "timeout"
    param = None
    type = "timeout"

    def __init__(self, seconds: float) -> None:
        self.message = f"The student did not answer within {seconds:g} s."
        super().__init__(self.message)


class LoraStudent:
    """One version of a LoRA student, loaded once and served by a :class:`BatchingGenerator`."""

    def __init__(self, model: Any, tokenizer: Any, manifest: dict[str, Any], *, model_id: str, max_batch: int = 8, window: float = 0.004) -> None:
        self.manifest = manifest
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.tools = bool(manifest.get("tools"))
        self.fingerprint = f"protege-{model_id.split('/', 1)[-1].replace('@', '-')}"
        self.generator = BatchingGenerator(model, tokenizer, max_batch=max_batch, window=window, name=model_id)

    @classmethod
    def load(cls, version_dir: Path, manifest: dict[str, Any], data_dir: Path, *, model_id: str, **kwargs: Any) -> "LoraStudent":
        model, tok = load_lora_model(version_dir, manifest, data_dir)
        return cls(model, tok, manifest, model_id=model_id, **kwargs)

    def close(self) -> None:
        self.generator.close()

    # -- request -> prompt ----------------------------------------------------------------------
    def prompt_ids(self, body: dict[str, Any]) -> list[int]:
        messages = template_messages(body["messages"])
        tools = body.get("tools") if self.tools else None
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
        if tools:
            # As given (OpenAI's {"type": "function", "function": {...}}, the shape HF chat templates
            # read): the job rendered its training prompts from the very same objects.
            kwargs["tools"] = list(tools)
        try:
            text = self.tokenizer.apply_chat_template(messages, **kwargs)
        except Exception as exc:  # the template rejects the conversation (e.g. roles out of order)
            raise ChatRequestError(f"The student's chat template cannot render these messages ({exc}).", param="messages") from None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prepare(self, body: dict[str, Any], timeout: float | None) -> tuple[dict[str, Any], Any]:
        params = parse_params(body)
        ids = self.prompt_ids(body)
        deadline = time.monotonic() + timeout if timeout else None
        return params, gen_request(params, ids, deadline)

    def _completion(self, result: GenResult, use_tools: bool) -> dict[str, Any]:
        return build_completion(self.model_id, result, tools=use_tools, fingerprint=self.fingerprint)

    def _uses_tools(self, body: dict[str, Any]) -> bool:
        return self.tools and bool(body.get("tools")) and body.get("tool_choice") != "none"

    # -- answers --------------------------------------------------------------------------------
    def complete(self, body: dict[str, Any], timeout: float | None = 60.0) -> dict[str, Any]:
        """Blocking: for threads (the gate's evaluation, the proxy's thread fallback)."""
        _params, req = self._prepare(body, timeout)
        try:
            result = self.generator.submit(req).result(timeout)
        except (TimeoutError, GenerationTimeout):
            req.cancelled.set()
            raise StudentTimeout(timeout or 0) from None
        return self._completion(result, self._uses_tools(body))

    async def acomplete(self, body: dict[str, Any], timeout: float | None = 60.0) -> dict[str, Any]:
        _params, req = self._prepare(body, timeout)
        fut = asyncio.wrap_future(self.generator.submit(req))
        try:
            result = await (asyncio.wait_for(fut, timeout) if timeout else fut)
        except (asyncio.TimeoutError, GenerationTimeout):
            req.cancelled.set()
            raise StudentTimeout(timeout or 0) from None
        except asyncio.CancelledError:
            req.cancelled.set()
            raise
        return self._completion(result, self._uses_tools(body))

    async def astream(self, body: dict[str, Any], timeout: float | None = 60.0) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` dicts in OpenAI's order: a role chunk per choice, content deltas,
        a finish chunk per choice, then (``stream_options.include_usage``) the usage chunk.
        Tool-call answers are parsed whole, so their text is not streamed as content."""
        params, req = self._prepare(body, timeout)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        use_tools = self._uses_tools(body)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        if not use_tools:
            req.on_delta = lambda i, t: loop.call_soon_threadsafe(q.put_nowait, (i, t))
        fut = asyncio.wrap_future(self.generator.submit(req))
        fut.add_done_callback(lambda _f: q.put_nowait(None))
        cid, created = completion_id(), int(time.time())

        def mk(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
            return chunk(cid, created, self.model_id, self.fingerprint, choices, usage, include_usage)

        end = time.monotonic() + timeout if timeout else None
        try:
            yield mk([{"index": i, "delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None, "finish_reason": None}
                      for i in range(params["n"])])
            while True:
                left = None if end is None else max(0.0, end - time.monotonic())
                try:
                    item = await asyncio.wait_for(q.get(), left)
                except asyncio.TimeoutError:
                    raise StudentTimeout(timeout or 0) from None
                if item is None:
                    break
                i, text = item
                yield mk([{"index": i, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])
            try:
                result = fut.result()
            except GenerationTimeout:
                raise StudentTimeout(timeout or 0) from None
            for c in result.choices:
                finish = c.finish_reason
                if use_tools:
                    content, calls = parse_tool_calls(c.text)
                    if calls:
                        finish = "tool_calls"
                        yield mk([{"index": c.index, "delta": {"tool_calls": [dict(call, index=k) for k, call in enumerate(calls)]}, "logprobs": None, "finish_reason": None}])
                    if content:
                        yield mk([{"index": c.index, "delta": {"content": content}, "logprobs": None, "finish_reason": None}])
                yield mk([{"index": c.index, "delta": {}, "logprobs": None, "finish_reason": finish}])
            if include_usage:
                usage = self._completion(result, False)["usage"]
                yield chunk(cid, created, self.model_id, self.fingerprint, [], usage)
        finally:
            req.cancelled.set()  # the client went away or we are done: stop generating for it


__all__ = ["LoraStudent", "StudentTimeout"]
