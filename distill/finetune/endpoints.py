"""Students served elsewhere: any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp server, an
Azure OpenAI deployment through its ``/openai/v1/`` base URL) answering as ``protege/<name>``.

Registered once (base URL, the endpoint's model name, and the NAME of the environment variable that
holds its key); the key is read from the environment when a client is made and never stored. Calls
go through the ``openai`` SDK (``AsyncOpenAI`` on the proxy's loop, ``OpenAI`` for threads such as
the gate), every request field except the model passed on as it came.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any, AsyncIterator

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_OURS = ("model", "messages", "stream", "stream_options", "store", "metadata")


class EndpointError(Exception):
    """OpenAI-shaped failure of an endpoint student (its own status and message passed on)."""

    def __init__(self, message: str, *, status: int = 502, code: str | None = "student_endpoint_error", param: str | None = None, type: str = "upstream_error") -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.param, self.type = message, status, code, param, type


def check_endpoint(name: str, base_url: str, model: str, api_key_env: str | None) -> None:
    if not _NAME.match(name or ""):
        raise EndpointError(f"invalid student name {name!r}: use 1-64 letters, digits, '_', '-' or '.'", status=400, code="invalid_name", param="name", type="invalid_request_error")
    if not re.match(r"^https?://[^\s/]+", base_url or ""):
        raise EndpointError(f"invalid base_url {base_url!r}: expected http(s)://host[:port]/path", status=400, code="invalid_value", param="base_url", type="invalid_request_error")
    if not model:
        raise EndpointError("model is required: the name the endpoint knows the model by", status=400, code="invalid_value", param="model", type="invalid_request_error")
    if api_key_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", api_key_env):
        raise EndpointError(f"invalid api_key_env {api_key_env!r}: the NAME of an environment variable (never the key)", status=400, code="invalid_value", param="api_key_env", type="invalid_request_error")


class EndpointStudent:
    """One registered endpoint student."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.name = row["name"]
        self.model_id = f"protege/{self.name}"
        self.base_url = row["base_url"].rstrip("/")
        self.model = row["model"]
        self.api_key_env = row.get("api_key_env")
        self.timeout = float(row.get("timeout") or 60.0)
        self._async: Any = None
        self._sync: Any = None
        self._lock = threading.Lock()

    def same(self, row: dict[str, Any]) -> bool:
        return (row["base_url"].rstrip("/"), row["model"], row.get("api_key_env"), float(row.get("timeout") or 60.0)) == (
            self.base_url, self.model, self.api_key_env, self.timeout)

    def _key(self) -> str:
        if not self.api_key_env:
            return "unused"  # local servers (Ollama, llama.cpp) take any key
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EndpointError(f"the key of student {self.model_id} is read from ${self.api_key_env}, which is not set", status=500, code="student_key_missing", type="server_error")
        return key

    def _client(self, sync: bool) -> Any:
        import openai

        key = self._key()
        with self._lock:
            if sync:
                if self._sync is None or self._sync.api_key != key:
                    self._sync = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout)
                return self._sync
            if self._async is None or self._async.api_key != key:
                self._async = openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout)
            return self._async

    def _args(self, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        extra = {k: v for k, v in body.items() if k not in _OURS}
        return {"model": self.model, "messages": body.get("messages"), "extra_body": extra or None, "timeout": timeout or self.timeout}

    def _rename(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj["model"] = self.model_id
        return obj

    @staticmethod
    def _translate(exc: Exception) -> EndpointError:
        import openai

        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            err = body.get("error", body) if isinstance(body, dict) else {}
            err = err if isinstance(err, dict) else {}
            return EndpointError(str(err.get("message") or exc.message), status=exc.status_code, code=err.get("code") or "student_endpoint_error",
                                 param=err.get("param"), type=str(err.get("type") or "upstream_error"))
        if isinstance(exc, openai.APITimeoutError):
            return EndpointError("The student endpoint did not answer in time.", status=504, code="timeout", type="timeout")
        if isinstance(exc, openai.APIConnectionError):
            return EndpointError("The student endpoint could not be reached.", status=502, code="student_endpoint_unreachable")
        return EndpointError(f"The student endpoint failed ({type(exc).__name__}).")

    def complete(self, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        try:
            resp = self._client(True).chat.completions.create(**self._args(body, timeout))
        except EndpointError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None
        return self._rename(resp.model_dump(mode="json", exclude_unset=True))

    async def acomplete(self, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        try:
            resp = await self._client(False).chat.completions.create(**self._args(body, timeout))
        except EndpointError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None
        return self._rename(resp.model_dump(mode="json", exclude_unset=True))

    async def astream(self, body: dict[str, Any], timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        args = self._args(body, timeout)
        args["stream"] = True
        if body.get("stream_options"):
            args["stream_options"] = body["stream_options"]
        try:
            stream = await self._client(False).chat.completions.create(**args)
        except EndpointError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None
        try:
            async for part in stream:
                yield self._rename(part.model_dump(mode="json", exclude_unset=True))
        except EndpointError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None
        finally:
            await stream.close()


__all__ = ["EndpointError", "EndpointStudent", "check_endpoint"]
