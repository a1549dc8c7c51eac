"""Metric loading: ``get_metric("bleu", tokenize="char")`` -> a configured :class:`Metric`.

Every module of this package except :mod:`.base` implements metrics and names them in a module-level
``METRICS`` table (name -> factory taking the metric's options). The registry is those tables, read
the first time a metric is asked for, so adding a metric is one new module here: the batch scorer,
the statistics and the reports ask the metric itself what they need (see :mod:`.base`).

Names are what reports and the store use; options are each metric's constructor arguments. Eval run
specs name metrics as ``"bleu"``, ``"bleu:tokenize=char,lowercase=true"`` or
``{"name": "bleu", ...options}`` (:func:`parse_metric`, :func:`load_metrics`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Mapping, Sequence

from protege.evals.metrics.base import Metric, MetricResult, Scores, check_pairs

Factory = Callable[..., Metric]

_registry: dict[str, Factory] | None = None


class MetricSpecError(ValueError):
    """A metric spec that names no metric or gives it bad options (the message is shown as is)."""


def _load_registry() -> dict[str, Factory]:
    global _registry
    if _registry is None:
        found: dict[str, Factory] = {}
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if info.name == "base" or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for name, factory in getattr(module, "METRICS", {}).items():
                if name in found:
                    raise RuntimeError(f"metric name {name!r} is defined twice (again in {module.__name__})")
                found[name] = factory
        _registry = found
    return _registry


def available_metrics() -> list[str]:
    return list(_load_registry())


def get_metric(name: str, **options: Any) -> Metric:
    """A configured metric; a clear ValueError for unknown names or options."""
    registry = _load_registry()
    try:
        make = registry[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(registry)}") from None
    try:
        return make(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for metric {name!r}: {exc}") from None


def parse_metric(spec: Any) -> tuple[str, dict[str, Any]]:
    """``"bleu"``, ``"bleu:tokenize=char,lowercase=true"`` or ``{"name": "bleu", ...options}``."""
    if isinstance(spec, Mapping):
        opts = dict(spec)
        return str(opts.pop("name")), opts
    name, _, rest = str(spec).partition(":")
    opts: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        low = value.strip().lower()
        opts[key.strip()] = True if low == "true" else False if low == "false" else _number(value.strip())
    return name.strip(), opts


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def load_metrics(specs: Sequence[Any]) -> list[Metric]:
    """The metrics of an eval run spec, in order; :class:`MetricSpecError` for unknown names, bad
    options or two metrics with one name."""
    out = []
    for spec in specs:
        name, opts = parse_metric(spec)
        try:
            out.append(get_metric(name, **opts))
        except (KeyError, ValueError, TypeError) as exc:
            # get_metric's message names the metric, and lists the available ones when the name is
            # unknown: said once, not wrapped in a second list.
            message = str(exc)
            if name in _load_registry() and not message.startswith("bad options"):
                message = f"metric {name}: {message}"
            raise MetricSpecError(message) from exc
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise MetricSpecError(f"metric names must be unique in one run, got {names}")
    return out


__all__ = ["Metric", "MetricResult", "MetricSpecError", "Scores", "available_metrics", "check_pairs", "get_metric",
           "load_metrics", "parse_metric"]
