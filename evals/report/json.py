"""JSON report: everything the other formats show, plus every item, output and item score."""

from __future__ import annotations

from typing import Any

import orjson


def render_json(data: dict[str, Any]) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode() + "\n"


__all__ = ["render_json"]
