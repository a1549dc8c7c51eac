"""A stand-in teacher for the README walkthrough: an OpenAI-compatible chat server on 127.0.0.1.

The walkthrough needs a teacher that answers like OpenAI (ids, usage, streams, errors) without a
paid account, and whose answers a small student can learn. This one classifies the questions of
the chatterbot-corpus package (see ``corpus.py``) by topic and answers ``{"label": "<topic>"}``;
a question it does not know gets the topic of the known question sharing the most words with it.

    python docs/walkthrough/teacher.py --port 8100

It serves ``POST /v1/chat/completions`` (streamed or not; ``stream_options.include_usage`` adds the
usage chunk, as at OpenAI) and ``GET /v1/models``. Any non-empty key is accepted; a request with
none gets OpenAI's 401. Token counts are words and punctuation marks, an approximation of a real
tokenizer that is stable from run to run. The answered model is the requested one with OpenAI's
snapshot date (``gpt-4o-mini`` -> ``gpt-4o-mini-2024-07-18``), as OpenAI answers.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import string
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import questions  # noqa: E402  (a sibling file: this is a script, not a package)

SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}
_WORD = re.compile(r"\w+|[^\w\s]")
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def count_tokens(text: str) -> int:
    return len(_WORD.findall(text))


def completion_id() -> str:
    """Shaped like OpenAI's: ``chatcmpl-`` and 29 base62 characters."""
    return "chatcmpl-" + "".join(secrets.choice(_BASE62) for _ in range(29))


class Classifier:
    """Question -> topic: the corpus' own label, else the label of the most similar question."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.exact = {q.lower(): label for q, label in pairs}
        self.known = [(set(_WORD.findall(q.lower())), label) for q, label in pairs]

    def __call__(self, text: str) -> str:
        key = text.strip().lower()
        if key in self.exact:
            return self.exact[key]
        words = set(_WORD.findall(key))
        return max(self.known, key=lambda k: len(words & k[0]) / (len(words | k[0]) or 1))[1]


def error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type, "param": param, "code": code}}, status=status)


def last_user_text(messages: list[Any]) -> str:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def make_app(classify: Classifier) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("authorization", "")
        if not (request.headers.get("api-key") or (auth.startswith("Bearer ") and auth[7:].strip())):
            return error(401, "You didn't provide an API key.", code="invalid_api_key")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            return error(400, "you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error(400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
        content = json.dumps({"label": classify(last_user_text(messages))}, separators=(",", ":"))
        prompt = sum(count_tokens(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str))
        done = count_tokens(content)
        usage = {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        cid, created = completion_id(), int(time.time())
        model = SNAPSHOTS.get(body["model"], body["model"])
        head = {"id": cid, "created": created, "model": model, "service_tier": "default", "system_fingerprint": "fp_walkthrough"}
        if not body.get("stream"):
            message = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
            return web.json_response({**head, "object": "chat.completion", "usage": usage,
                                      "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}]})
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)

        async def send(choices: list[dict[str, Any]], usage_value: Any = None) -> None:
            chunk = {**head, "object": "chat.completion.chunk", "choices": choices}
            if with_usage:
                chunk["usage"] = usage_value
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await send([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "finish_reason": None}])
        for piece in re.findall(r".{1,8}", content):  # a few characters a chunk, as OpenAI's streams come
            await send([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        await send([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if with_usage:
            await send([], usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1721172741, "owned_by": "system"} for m in SNAPSHOTS]
        return web.json_response({"object": "list", "data": data})

    async def not_found(request: web.Request) -> web.Response:
        return error(404, f"Invalid URL ({request.method} {request.path})")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    pairs = questions()
    print(f"teacher: {len(pairs)} chatterbot-corpus questions in {len({t for _, t in pairs})} topics; "
          f"http://127.0.0.1:{args.port}/v1", flush=True)
    web.run_app(make_app(Classifier(pairs)), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
