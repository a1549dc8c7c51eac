"""The hot path: ``POST .../chat/completions`` as a raw ASGI handler.

Per request: read the body, parse it once (orjson), check metadata, forward bytes, send bytes back,
hand a :class:`ChatCapture` to the writer. No framework, no database, no re-serialisation unless the
body must change (injected ``include_usage``, stripped ``store``/``metadata``, a student's model).

Read-your-writes: the capture is handed to the writer *before* the client's last bytes go out
(before ``[DONE]`` on a stream, where the SDK stops reading), so a client that has its whole answer
and at once retrieves it, or attaches feedback, finds it (``CaptureWriter.read_your_writes``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from typing import Any

import aiohttp
import orjson

from protege.settings import Settings
from protege.store import CaptureWriter

from . import errors
from .auth import client_key
from .body import Refused, admitted_body
from .capture import ChatCapture
from .hooks import LocalModels, Route, Router
from .ids import StreamIdRewriter, rewrite_body
from .metrics import Metrics
from .streaming import UsageFilter, completion_to_sse
from .upstream import Upstream, forward_headers, response_headers
from .validation import metadata_error, stream_options_error

log = logging.getLogger("protege.proxy")

BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
SERVED_TEACHER = (b"x-protege-served-by", b"teacher")
SERVED_STUDENT = (b"x-protege-served-by", b"student")
_IDENTITY = {"accept-encoding": "identity"}
# A non-streamed request starts watching for its client leaving after this long (see _post_watched).
WATCH_AFTER_S = 0.25


class _Disconnect:
    __slots__ = ("gone", "resp")

    def __init__(self) -> None:
        self.gone = False
        self.resp: Any = None


class ChatForwarder:
    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        writer: CaptureWriter,
        metrics: Metrics,
        local_models: LocalModels | None = None,
        router: Router | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.writer = writer
        self.metrics = metrics
        self.local_models = local_models
        self.router = router
        self.allowed_keys = list(settings.proxy_keys) + list(settings.admin_keys) if settings.proxy_keys else []
        self.max_body = settings.max_body_bytes
        self.capture_mode = settings.capture
        self.forward_store = settings.forward_store
        self.background: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any, shape: str, deployment: str | None = None) -> None:
        t0 = time.perf_counter()
        started = time.time()
        key, style = client_key(scope["headers"])
        opt_out = False
        for name, value in scope["headers"]:
            if name == b"x-protege-capture" and value.lower() in (b"off", b"false", b"0", b"no"):
                opt_out = True
            elif name == b"content-length":
                try:
                    if int(value) > self.max_body:
                        return await self._fail(send, 413, errors.too_large(self.max_body))
                except ValueError:
                    pass
        try:
            use_server, body = await admitted_body(receive, key, self.allowed_keys, self.max_body)
        except Refused as refused:
            return await self._fail(send, refused.status, refused.body)
        if body is None:
            return
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            return await self._fail(send, 400, errors.error_bytes(BAD_JSON))
        if not isinstance(req, dict):
            return await self._fail(send, 400, errors.error_bytes(BAD_JSON))
        metadata = req.get("metadata")
        if metadata is not None:
            problem = metadata_error(metadata)
            if problem is not None:
                return await self._fail(send, 400, errors.error_bytes(problem[0], param="metadata", code=problem[1]))
        model = req.get("model")
        if model is not None and not isinstance(model, str):
            return await self._fail(send, 400, errors.error_bytes(
                f"Invalid type for 'model': expected a string, but got {type(model).__name__} instead.",
                param="model", code="invalid_type"))
        if "stream_options" in req and (problem := stream_options_error(req)) is not None:
            return await self._fail(send, 400, errors.error_bytes(problem[0], param="stream_options", code=problem[1]))
        stream = req.get("stream") is True
        mode = self.capture_mode
        capture = not opt_out and (mode == "all" or (mode == "store" and req.get("store") is True))

        # What goes upstream: the client's bytes unless something must change.
        fwd: dict[str, Any] | None = None
        injected = False
        if stream and capture and not (req.get("stream_options") or {}).get("include_usage"):
            fwd = dict(req)
            fwd["stream_options"] = dict(req.get("stream_options") or {}, include_usage=True)
            injected = True
        if not self.forward_store and ("store" in req or "metadata" in req):
            fwd = dict(fwd or req)
            fwd.pop("store", None)
            fwd.pop("metadata", None)
        if deployment and not model:
            fwd = dict(fwd or req)
            fwd["model"] = model = deployment
        data = orjson.dumps(fwd) if fwd is not None else body

        cap = ChatCapture(started, t0, body, req, stream, self.upstream.name, key) if capture else None

        if self.local_models is not None and model:
            local = self.local_models.has(model)
            claims = getattr(self.local_models, "claims", None)
            if not local and claims is not None and claims(model):
                local = await self._recheck(model)
                if not local:
                    return await self._not_found(send, model, cap)
            if local:
                if cap is not None:
                    cap.upstream = "local"
                if stream and hasattr(self.local_models, "astream"):
                    await self._local_stream(receive, send, req, cap, model)
                else:
                    await self._local(send, req, cap, model, "student")
                return

        route: Route | None = None
        if self.router is not None:
            route = self.router.route(model, metadata or {})
        if route is not None and route.stage in ("canary", "full") and (
            route.stage == "full" or random.random() * 100.0 < route.percent
        ):
            if await self._student(scope, receive, send, req, fwd, route, stream, injected, key, style, use_server, cap, shape, deployment):
                compare = route.compare_percent
                if cap is not None and compare > 0 and random.random() * 100.0 < compare:
                    # Online agreement: the teacher answers the same request in the background.
                    teacher = model or deployment or ""
                    self._spawn(self._second_answer(req, teacher, self.settings.upstream_timeout, "teacher", cap, key, style, use_server, shape, scope))
                return
            if cap is not None:  # the student failed: the teacher answers, timed from the start
                cap.chunks = [] if stream else None

        url = self.upstream.chat_url(shape, deployment, model, scope.get("query_string", b""))
        headers = forward_headers(scope["headers"], await self.upstream.auth_headers(key, style, use_server))
        headers.update(_IDENTITY)
        await self._forward(receive, send, url, headers, data, stream, injected, cap, SERVED_TEACHER)
        if route is not None and route.stage == "shadow" and cap is not None:
            self._spawn(self._second_answer(req, route.student_model, route.timeout, "student", cap, key, style, use_server, shape, scope))

    # ------------------------------------------------------------------------------------------
    async def _fail(self, send: Any, status: int, body: bytes) -> None:
        self.metrics.request("chat", status)
        await errors.send_json(send, status, body)

    async def _forward(
        self, receive: Any, send: Any, url: Any, headers: dict[str, str], data: bytes, stream: bool,
        injected: bool, cap: ChatCapture | None, served: tuple[bytes, bytes],
    ) -> None:
        session = self.upstream.session
        assert session is not None
        t_up = time.perf_counter()
        try:
            if stream:
                resp = await session.post(url, data=data, headers=headers, timeout=self.upstream.stream_timeout)
                # Errors, and servers that answer a stream request with plain JSON, are relayed whole.
                relay = resp.status < 400 and resp.content_type == "text/event-stream"
                if not relay:
                    rbody = await resp.read()
                    resp.release()
            else:
                relay = False
                answered = await self._post_watched(receive, session, url, data, headers)
                if answered is None:
                    return self._client_gone(cap, served)
                resp, rbody = answered
        except asyncio.TimeoutError:
            return await self._upstream_failed(send, cap, 504, "timeout", "The upstream model did not answer in time.", "upstream_timeout")
        except aiohttp.ClientError as exc:
            return await self._upstream_failed(send, cap, 502, "unreachable", f"The upstream model could not be reached ({type(exc).__name__}).", "upstream_unreachable")
        if relay:
            await self._relay_stream(receive, send, resp, injected, cap, served, t_up)
            return
        t_end = time.perf_counter()
        self.metrics.upstream_latency(t_end - t_up)
        status = resp.status
        if cap is not None and status < 400:
            rbody, cap.upstream_id = rewrite_body(rbody, cap.record_id)
        hdrs = response_headers(resp.raw_headers)
        hdrs.append((b"content-length", str(len(rbody)).encode()))
        hdrs.append(served)
        if cap is not None:  # before the answer goes out (read-your-writes)
            cap.t_first = cap.t_end = t_end
            cap.status = status
            cap.body = rbody
            cap.chunks = None
            cap.request_id = resp.headers.get("x-request-id")
            cap.served_by = served[1].decode()
            if status >= 400:
                cap.outcome = "upstream_error"
            self.writer.submit(cap)
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": rbody})
        self.metrics.request("chat", status)

    async def _post_watched(self, receive: Any, session: Any, url: Any, data: bytes, headers: dict[str, str]) -> tuple[Any, bytes] | None:
        """A non-streamed upstream call that stops when the client goes away (then None: nobody
        can receive the answer, and the capture must say so rather than "ok").

        A watcher task (as streams have) is armed only once the upstream has taken WATCH_AFTER_S:
        a task per request cost ~6% of the proxy's CPU per request (bench/bench_access.py), a timer
        costs ~1 µs, and nearly every real model call outlasts the delay anyway. A client that
        leaves during a faster answer cannot be told from one that got it. On a disconnect the
        watcher cancels this task; ``uncancel`` tells that from a real cancellation."""
        task = asyncio.current_task()
        watch = _Disconnect()
        armed = True
        watchers: list[asyncio.Future] = []

        def on_gone(_f: Any) -> None:
            if armed and watch.gone and task is not None:
                task.cancel()

        def arm() -> None:
            if armed:
                watcher = asyncio.ensure_future(self._watch(receive, watch))
                watcher.add_done_callback(on_gone)
                watchers.append(watcher)

        timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, arm)
        resp = None
        try:
            resp = await session.post(url, data=data, headers=headers)
            rbody = await resp.read()
        except asyncio.CancelledError:
            if resp is not None:
                resp.close()
            if watch.gone and task is not None and task.uncancel() == 0:
                return None
            raise
        except BaseException:
            if resp is not None:
                resp.close()
            raise
        finally:
            armed = False
            timer.cancel()
            for watcher in watchers:
                watcher.cancel()
        resp.release()
        return resp, rbody

    def _client_gone(self, cap: ChatCapture | None, served: tuple[bytes, bytes]) -> None:
        """The client left before a non-streamed answer: recorded like a stream's disconnect."""
        self.metrics.request("chat", 499)
        if cap is not None:
            cap.t_end = time.perf_counter()
            cap.outcome = "client_disconnected"
            cap.served_by = served[1].decode()
            self.writer.submit(cap)

    async def _upstream_failed(self, send: Any, cap: ChatCapture | None, status: int, outcome: str, message: str, code: str) -> None:
        await self._refuse(send, cap, status, errors.error_bytes(message, type="upstream_error", code=code), outcome)

    async def _refuse(
        self, send: Any, cap: ChatCapture | None, status: int, body: bytes, outcome: str = "upstream_error", served_by: str | None = None,
    ) -> None:
        """Answer with an error, captured (before the client has it: read-your-writes)."""
        if cap is not None:
            cap.t_end = time.perf_counter()
            cap.status, cap.outcome, cap.error = status, outcome, body
            if served_by is not None:
                cap.served_by = served_by
            self.writer.submit(cap)
        await self._fail(send, status, body)

    async def _relay_stream(
        self, receive: Any, send: Any, resp: Any, injected: bool, cap: ChatCapture | None,
        served: tuple[bytes, bytes], t_up: float,
    ) -> None:
        hdrs = list(SSE_HEADERS)
        rid = resp.headers.get("x-request-id")
        if rid:
            hdrs.append((b"x-request-id", rid.encode("latin-1")))
        hdrs.append(served)
        await send({"type": "http.response.start", "status": resp.status, "headers": hdrs})
        watch = _Disconnect()
        watch.resp = resp
        watcher = asyncio.ensure_future(self._watch(receive, watch))
        filt = UsageFilter() if injected else None
        ids = StreamIdRewriter(cap.record_id) if cap is not None else None
        chunks = cap.chunks if cap is not None else None
        outcome = "ok"
        error_event = None
        t_first = None

        def capture(outcome: str, error_event: Any) -> None:
            """Hand the capture over, once: never touched again after ``submit``."""
            nonlocal cap, chunks
            if cap is None:
                return
            cap.t_first = t_first
            cap.t_end = time.perf_counter()
            cap.status = resp.status
            cap.outcome = outcome
            cap.error = error_event
            cap.request_id = rid
            cap.served_by = served[1].decode()
            if ids is not None:
                cap.upstream_id = ids.upstream_id
            self.writer.submit(cap)
            cap = chunks = None

        try:
            async for data in resp.content.iter_any():
                if t_first is None:
                    t_first = time.perf_counter()
                if chunks is not None:
                    chunks.append(data)
                if watch.gone:
                    break
                out = ids.feed(data) if ids is not None else data
                if filt is not None:
                    out = filt.feed(out)
                if out:
                    if cap is not None and b"[DONE]" in out:
                        # The SDK returns at [DONE], before the upstream closes the stream: the
                        # capture is submitted first, so a client that has its answer can read it.
                        capture("ok", None)
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except asyncio.TimeoutError:
            outcome = "timeout"
            error_event = errors.error_obj("The upstream model stopped sending in time.", "upstream_error", code="upstream_timeout")
        except (aiohttp.ClientError, ConnectionError) as exc:
            if not watch.gone:
                outcome = "upstream_error"
                error_event = errors.error_obj(f"The upstream stream broke ({type(exc).__name__}).", "upstream_error", code="upstream_error")
        finally:
            watcher.cancel()
        tail = None
        if watch.gone:
            outcome = "client_disconnected"
            resp.close()
        else:
            tail = ids.flush() if ids is not None else b""
            if filt is not None:
                tail = filt.feed(tail) + filt.flush()
            if error_event is not None:
                tail += b"data: " + orjson.dumps(error_event) + b"\n\n"
                resp.close()
            else:
                resp.release()
        self.metrics.upstream_latency(time.perf_counter() - t_up)
        self.metrics.request("chat", resp.status)
        capture(outcome, error_event)  # before the last bytes go out (read-your-writes)
        if tail is not None:
            await send({"type": "http.response.body", "body": tail, "more_body": False})

    @staticmethod
    async def _watch(receive: Any, watch: _Disconnect) -> None:
        """Notice a client that goes away mid-stream, and stop reading upstream at once."""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                watch.gone = True
                if watch.resp is not None:
                    watch.resp.close()
                return

    # -- local models, students, shadow ---------------------------------------------------------
    async def _recheck(self, model: str) -> bool:
        """A local-namespace model not in the in-memory index: re-read it off the loop, once."""
        assert self.local_models is not None
        refresh = getattr(self.local_models, "refresh", None)
        if refresh is not None:
            await asyncio.to_thread(refresh, time.monotonic())
        return self.local_models.has(model)

    async def _not_found(self, send: Any, model: str, cap: ChatCapture | None) -> None:
        """OpenAI's 404 for a model that does not exist (never silently answered by the teacher)."""
        why = getattr(self.local_models, "missing_reason", lambda _m: None)(model)
        message = f"The model `{model}` does not exist or you do not have access to it." + (f" {why}" if why else "")
        if cap is not None:
            cap.upstream = "local"
        await self._refuse(send, cap, 404, errors.error_bytes(message, code="model_not_found"))

    @staticmethod
    def _local_error(exc: Exception, model: str) -> tuple[int, bytes]:
        """A local model's exception as (status, OpenAI error JSON): its own status when it has one."""
        status = getattr(exc, "status", None)
        if isinstance(status, int) and 400 <= status < 600 and getattr(exc, "message", None):
            etype = getattr(exc, "type", None) or ("invalid_request_error" if status < 500 else "server_error")
            return status, errors.error_bytes(str(exc.message), type=etype, param=getattr(exc, "param", None), code=getattr(exc, "code", None))  # type: ignore[attr-defined]
        log.warning("local model %s failed: %s", model, type(exc).__name__)
        return 500, errors.error_bytes(f"The local model {model} failed.", type="server_error", code="local_model_error")

    async def _local_stream(self, receive: Any, send: Any, req: dict[str, Any], cap: ChatCapture | None, model: str) -> None:
        """Stream a local model's chunks as SSE as they are generated. When capturing, usage is
        asked for (and kept from the client unless it asked too), so the capture has it."""
        assert self.local_models is not None
        wants_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        body = dict(req)
        if cap is not None and not wants_usage:
            body["stream_options"] = dict(req.get("stream_options") or {}, include_usage=True)
        agen = self.local_models.astream(body)  # type: ignore[attr-defined]
        try:
            first = await anext(agen, None)
        except Exception as exc:
            status, err = self._local_error(exc, model)
            return await self._refuse(send, cap, status, err, served_by="student")
        await send({"type": "http.response.start", "status": 200, "headers": list(SSE_HEADERS) + [SERVED_STUDENT]})
        t_first = time.perf_counter()
        watch = _Disconnect()
        watcher = asyncio.ensure_future(self._watch(receive, watch))
        chunks = cap.chunks if cap is not None else None
        outcome, error_event = "ok", None

        def encode(part: dict[str, Any]) -> tuple[bytes, bytes]:
            if cap is not None:  # the client sees the capture's id, in every chunk
                part = dict(part, id=cap.record_id)
            raw = b"data: " + orjson.dumps(part) + b"\n\n"
            if wants_usage or cap is None:
                return raw, raw
            if part.get("choices") == [] and part.get("usage") is not None:
                return raw, b""
            if "usage" in part:
                part = {k: v for k, v in part.items() if k != "usage"}
                return raw, b"data: " + orjson.dumps(part) + b"\n\n"
            return raw, raw

        try:
            part = first
            while part is not None:
                kept, shown = encode(part)
                if chunks is not None:
                    chunks.append(kept)
                if watch.gone:
                    break
                if shown:
                    await send({"type": "http.response.body", "body": shown, "more_body": True})
                part = await anext(agen, None)
        except Exception as exc:
            status, err = self._local_error(exc, model)
            outcome = "timeout" if status == 504 else "upstream_error"
            error_event = orjson.loads(err)
        finally:
            watcher.cancel()
            await agen.aclose()
        tail = None
        if watch.gone:
            outcome = "client_disconnected"
        else:
            tail = b"data: [DONE]\n\n" if error_event is None else b"data: " + orjson.dumps(error_event) + b"\n\n"
            if chunks is not None:
                chunks.append(tail)
        self.metrics.request("chat", 200)
        if cap is not None:  # before the last bytes go out (read-your-writes)
            cap.t_first, cap.t_end = t_first, time.perf_counter()
            cap.status, cap.outcome, cap.error, cap.served_by = 200, outcome, error_event, "student"
            self.writer.submit(cap)
        if tail is not None:
            await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _complete_local(self, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        assert self.local_models is not None
        body = dict(body, stream=False)
        body.pop("stream_options", None)
        acomplete = getattr(self.local_models, "acomplete", None)
        if acomplete is not None:
            out = await acomplete(body, timeout)
        else:
            coro = asyncio.to_thread(self.local_models.complete, body)
            out = await (asyncio.wait_for(coro, timeout) if timeout else coro)
        out.setdefault("id", f"chatcmpl-{secrets.token_hex(12)}")
        out.setdefault("object", "chat.completion")
        out.setdefault("created", int(time.time()))
        out.setdefault("model", body.get("model"))
        return out

    async def _local(self, send: Any, req: dict[str, Any], cap: ChatCapture | None, model: str, served_by: str, completion: dict | None = None) -> None:
        served = SERVED_STUDENT if served_by == "student" else SERVED_TEACHER
        if completion is None:
            try:
                completion = await self._complete_local(req)
            except Exception as exc:
                status, body = self._local_error(exc, model)
                return await self._refuse(send, cap, status, body, served_by=served_by)
        if cap is not None:  # the client gets the capture's id, the model's own is kept beside it
            cap.upstream_id = None if completion.get("id") is None else str(completion["id"])
            completion = dict(completion, id=cap.record_id)
        if cap is not None:  # before the answer goes out (read-your-writes)
            cap.t_first = cap.t_end = time.perf_counter()
            cap.status = 200
            cap.completion = completion
            cap.chunks = None
            cap.served_by = served_by
            self.writer.submit(cap)
        if req.get("stream") is True:
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
            out = completion_to_sse(completion, include_usage)
            hdrs = list(SSE_HEADERS) + [served]
            await send({"type": "http.response.start", "status": 200, "headers": hdrs})
            await send({"type": "http.response.body", "body": out})
        else:
            out = orjson.dumps(completion)
            await errors.send_json(send, 200, out, [served])
        self.metrics.request("chat", 200)

    async def _student(
        self, scope: dict, receive: Any, send: Any, req: dict[str, Any], fwd: dict[str, Any] | None, route: Route,
        stream: bool, injected: bool, key: str | None, style: str | None, use_server: bool, cap: ChatCapture | None,
        shape: str, deployment: str | None,
    ) -> bool:
        """Let the student answer; False (nothing sent) when it errors or times out."""
        student = route.student_model
        if self.local_models is not None and self.local_models.has(student):
            try:
                completion = await self._complete_local(dict(req, model=student), route.timeout)
            except Exception as exc:
                log.warning("student %s failed (%s); the teacher answers", student, type(exc).__name__)
                return False
            if cap is not None:
                cap.upstream = "local"
            await self._local(send, req, cap, student, "student", completion)
            return True
        sbody = dict(fwd or req, model=student)
        url = self.upstream.chat_url(shape if shape != "deployment" else "v1", None, student, b"")
        headers = forward_headers(scope["headers"], await self.upstream.auth_headers(key, style, use_server))
        headers.update(_IDENTITY)
        session = self.upstream.session
        assert session is not None
        t_up = time.perf_counter()
        try:
            resp = await asyncio.wait_for(session.post(url, data=orjson.dumps(sbody), headers=headers), route.timeout)
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            log.warning("student %s failed (%s); the teacher answers", student, type(exc).__name__)
            return False
        if resp.status >= 400:
            resp.close()
            return False
        if stream:
            await self._relay_stream(receive, send, resp, injected, cap, SERVED_STUDENT, t_up)
            return True
        try:
            rbody = await asyncio.wait_for(resp.read(), route.timeout)
        except (asyncio.TimeoutError, aiohttp.ClientError):
            resp.close()
            return False
        resp.release()
        if cap is not None:
            rbody, cap.upstream_id = rewrite_body(rbody, cap.record_id)
        hdrs = response_headers(resp.raw_headers)
        hdrs += [(b"content-length", str(len(rbody)).encode()), SERVED_STUDENT]
        if cap is not None:  # before the answer goes out (read-your-writes)
            cap.t_first = cap.t_end = time.perf_counter()
            cap.status, cap.body, cap.served_by = resp.status, rbody, "student"
            cap.request_id = resp.headers.get("x-request-id")
            self.writer.submit(cap)
        await send({"type": "http.response.start", "status": resp.status, "headers": hdrs})
        await send({"type": "http.response.body", "body": rbody})
        self.metrics.request("chat", resp.status)
        return True

    async def _second_answer(
        self, req: dict[str, Any], model: str, timeout: float, served_by: str, primary: ChatCapture,
        key: str | None, style: str | None, use_server: bool, shape: str, scope: dict,
    ) -> None:
        """After the client got its answer: the other model answers too, captured with source "shadow",
        ``served_by`` and ``paired_with`` (the capture the client got), for online agreement."""
        body = dict(req, model=model, stream=False)
        body.pop("stream_options", None)
        if not self.forward_store:
            body.pop("store", None)
            body.pop("metadata", None)
        shown = dict(req, model=model)
        cap = ChatCapture(time.time(), time.perf_counter(), orjson.dumps(shown), shown, False, self.upstream.name, key)
        cap.source = "shadow"
        cap.served_by = served_by
        cap.pair = primary
        cap.metadata = dict(req.get("metadata") or {})
        try:
            if self.local_models is not None and self.local_models.has(model):
                cap.upstream = "local"
                cap.completion = await self._complete_local(body, timeout)
                cap.status = 200
            else:
                session = self.upstream.session
                assert session is not None
                url = self.upstream.chat_url(shape if shape != "deployment" else "v1", None, model, b"")
                headers = forward_headers(scope["headers"], await self.upstream.auth_headers(key, style, use_server))
                headers.update(_IDENTITY)

                async def call() -> tuple[int, bytes, Any]:
                    async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
                        return resp.status, await resp.read(), resp.headers.get("x-request-id")

                cap.status, cap.body, cap.request_id = await asyncio.wait_for(call(), timeout)
                if cap.status >= 400:
                    cap.outcome = "upstream_error"
        except asyncio.TimeoutError:
            cap.outcome, cap.status = "timeout", 504
        except Exception as exc:
            cap.outcome, cap.status, cap.error = "unreachable", 502, errors.error_obj(type(exc).__name__)
        cap.t_first = cap.t_end = time.perf_counter()
        self.writer.submit(cap)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def drain(self, timeout: float = 30.0) -> None:
        """Shutdown: let shadow runs finish so their captures are written too."""
        if self.background:
            await asyncio.wait(list(self.background), timeout=timeout)
