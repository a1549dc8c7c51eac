"""Typing one record on its own, so that one bad value never fails a whole batch insert.

A batch insert builds one Arrow array per column: a single value of the wrong type (an upstream
that answers ``"id": 123``, ``"prompt_tokens": 3e9`` or ``"created": "now"``) makes the whole batch
fail. :func:`record_problems` finds such values before a record joins a batch, so the writer can
store that one capture as ``invalid_response`` (raw body kept) and write the others as usual.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from .completions import COLUMNS

_INT_BOUNDS = {pa.int32(): (-(2**31), 2**31 - 1), pa.int64(): (-(2**63), 2**63 - 1)}
_NOT_NULL = ("id", "created", "started_at", "request", "outcome")


def value_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot go into column ``name`` (None when it can)."""
    if value is None:
        return f"'{name}' is required" if name in _NOT_NULL else None
    typ = COLUMNS[name]
    if typ in _INT_BOUNDS:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"'{name}' must be an integer, got {type(value).__name__} {_short(value)}"
        lo, hi = _INT_BOUNDS[typ]
        if not lo <= value <= hi:
            return f"'{name}' is out of range: {value}"
        return None
    if typ == pa.float64():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"'{name}' must be a number, got {type(value).__name__} {_short(value)}"
        return None
    if typ == pa.bool_():
        return None if isinstance(value, bool) else f"'{name}' must be a boolean, got {type(value).__name__}"
    if typ == pa.string():
        if not isinstance(value, str):
            return f"'{name}' must be a string, got {type(value).__name__} {_short(value)}"
        if name == "metadata" and value != "{}":
            try:
                md = orjson.loads(value)
            except orjson.JSONDecodeError:
                return "'metadata' is not JSON"
            if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
                return "'metadata' must be an object of string values"
        return None
    return None


def record_problems(rec: dict[str, Any], names: Any = None) -> list[str]:
    """Every column of ``rec`` (or only ``names``) whose value does not fit its column type."""
    out = []
    for name in names if names is not None else COLUMNS:
        if name == "seq" and name not in rec:
            continue
        problem = value_problem(name, rec.get(name))
        if problem is not None:
            out.append(problem)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
