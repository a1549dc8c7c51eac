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

_NOT_NULL = frozenset(("id", "created", "started_at", "request", "outcome"))
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def _kind(typ: pa.DataType) -> str:
    if typ == pa.int32():
        return "int32"
    if typ == pa.int64():
        return "int64"
    if typ == pa.float64():
        return "float"
    if typ == pa.bool_():
        return "bool"
    return "str"


# Column -> kind, computed once: comparing Arrow types per value costs microseconds per record.
_KINDS = {name: _kind(typ) for name, typ in COLUMNS.items()}


def value_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot go into column ``name`` (None when it can)."""
    if value is None:
        return f"'{name}' is required" if name in _NOT_NULL else None
    kind = _KINDS[name]
    cls = type(value)
    if kind == "str":
        if cls is not str:
            return f"'{name}' must be a string, got {cls.__name__} {_short(value)}"
        if name == "metadata" and value != "{}":
            try:
                md = orjson.loads(value)
            except orjson.JSONDecodeError:
                return "'metadata' is not JSON"
            if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
                return "'metadata' must be an object of string values"
        return None
    if kind in ("int32", "int64"):
        if cls is not int:
            return f"'{name}' must be an integer, got {cls.__name__} {_short(value)}"
        lo, hi = _INT32 if kind == "int32" else _INT64
        if not lo <= value <= hi:
            return f"'{name}' is out of range: {value}"
        return None
    if kind == "float":
        if cls is not float and cls is not int:
            return f"'{name}' must be a number, got {cls.__name__} {_short(value)}"
        return None
    return None if cls is bool else f"'{name}' must be a boolean, got {cls.__name__}"


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
