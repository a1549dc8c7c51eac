"""Where an eval run started over HTTP may send one of the server's credentials.

A candidate's ``api_key_env`` names an environment variable of the *server* process, and a judge
without an explicit ``api_key`` gets ``OPENAI_API_KEY`` from the SDK. Over HTTP the caller chooses
the ``base_url``, so without a check anyone allowed to start a run could have the server send its
key to a host of their choosing. Such a credential may only go to a host the server was configured
to call: the upstream, the Azure endpoint, or a host listed in ``eval_allowed_hosts``. The CLI is
not checked: there the user and the environment are the same person's. A ``protege/<name>``
candidate without ``base_url`` is sent to the server holding the store (:mod:`.served`), that is,
to this server: its credential stays here.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from . import served
from .metrics import MetricSpecError, parse_metric

SDK_DEFAULT_BASE = "https://api.openai.com/v1"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, int | None] | None:
    """(host, port) of a URL, the port defaulted from the scheme; None when it has no host."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), port if port is not None else _DEFAULT_PORTS.get(parts.scheme.lower())


def _allowed_entry(entry: str) -> tuple[str, int | None] | None:
    """``host`` (any port) or ``host:port`` from the allow-list; a full URL works too."""
    entry = entry.strip()
    if "://" in entry:
        return origin(entry)
    parsed = origin("//" + entry)
    if parsed is None:
        return None
    has_port = entry.rsplit("]", 1)[-1].count(":") == 1
    return (parsed[0], parsed[1] if has_port else None)


def allowed_origins(settings: Any) -> list[tuple[str, int | None]]:
    """The configured upstream and Azure endpoint (exact host and port), and the allow-list."""
    out: list[tuple[str, int | None]] = []
    if settings is None:
        return out
    for url in (getattr(settings, "upstream", None), getattr(settings, "azure_endpoint", None)):
        if url and (o := origin(str(url))) is not None:
            out.append(o)
    for entry in getattr(settings, "eval_allowed_hosts", None) or []:
        if (o := _allowed_entry(str(entry))) is not None:
            out.append(o)
    return out


def _is_allowed(url: str, allowed: Iterable[tuple[str, int | None]]) -> bool:
    target = origin(url)
    if target is None:
        return False
    return any(host == target[0] and (port is None or port == target[1]) for host, port in allowed)


def _describe(url: str) -> str:
    o = origin(url)
    if o is None:
        return repr(url)
    return f"{o[0]}:{o[1]}" if o[1] is not None else o[0]


def credential_problem(candidates: Iterable[Any], metrics: Iterable[Any], settings: Any,
                       environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """``(message, param)`` when the run would send a server credential to a host not allowed."""
    allowed = allowed_origins(settings)
    default = environ.get("OPENAI_BASE_URL") or SDK_DEFAULT_BASE
    hint = ("Point it at the configured upstream, or add the host to eval_allowed_hosts "
            "(PROTEGE_EVAL_ALLOWED_HOSTS, a JSON list) on the server.")
    for cand in candidates:
        if not getattr(cand, "api_key_env", None):
            continue  # no server credential: the SDK gets a placeholder key
        if served.needs_server(cand):
            continue  # a protege/<name> student without base_url is sent to this server itself
        target = cand.azure_endpoint or cand.base_url or default
        if not _is_allowed(target, allowed):
            return (f"candidate {cand.name}: api_key_env {cand.api_key_env} would send a server credential to "
                    f"{_describe(target)}, which this server is not configured to call. {hint}", "candidates")
    for spec in metrics:
        try:
            name, opts = parse_metric(spec)
        except (KeyError, TypeError, ValueError, MetricSpecError):
            continue  # the run spec's own validation reports it
        if name != "judge" or opts.get("api_key") or opts.get("client") is not None:
            continue
        target = opts.get("base_url") or default
        if not _is_allowed(str(target), allowed):
            return (f"metric judge: without an api_key the judge would send the server's OPENAI_API_KEY to "
                    f"{_describe(str(target))}, which this server is not configured to call. {hint}", "metrics")
    return None
