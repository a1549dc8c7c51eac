"""JSON validity and JSON-Schema conformance of outputs (references are not used).

Structured-output students are judged first on whether their output is usable at all; these are
binary per item, so teacher-vs-student differences get a McNemar test.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jsonschema
import orjson

from protege.evals.metrics.base import Metric, check_pairs

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def parse_json(text: str, allow_fences: bool = False) -> tuple[bool, Any]:
    """(ok, value). ``allow_fences`` accepts a single ```json ... ``` block, which chat models often add."""
    if allow_fences:
        m = _FENCE.match(text)
        if m:
            text = m.group(1)
    try:
        return True, orjson.loads(text)
    except orjson.JSONDecodeError:
        return False, None


class JsonValid(Metric):
    name = "json_valid"
    kind = "mean"
    scale = "binary"

    def __init__(self, allow_fences: bool = False) -> None:
        self.allow_fences = allow_fences

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str] | None = None) -> list[float]:
        if refs is not None:
            check_pairs(hyps, refs)
        return [1.0 if parse_json(h, self.allow_fences)[0] else 0.0 for h in hyps]

    def signature(self) -> str:
        return f"json_valid|fences:{'allow' if self.allow_fences else 'no'}|orjson"


class JsonSchemaValid(Metric):
    """1.0 when the output parses as JSON and validates against ``schema`` (the schema's own $schema draft)."""

    name = "json_schema"
    kind = "mean"
    scale = "binary"

    def __init__(self, schema: dict, allow_fences: bool = False) -> None:
        if not isinstance(schema, dict):
            raise ValueError("json_schema needs a JSON Schema object (a dict)")
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid JSON Schema: {exc.message}") from None
        self.schema = schema
        self.allow_fences = allow_fences
        self._validator = cls(schema)
        self._draft = cls.__name__

    def errors(self, text: str) -> list[str]:
        """Why one output fails (empty when it conforms) -- for drill-down in reports."""
        ok, value = parse_json(text, self.allow_fences)
        if not ok:
            return ["not valid JSON"]
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in self._validator.iter_errors(value)]

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str] | None = None) -> list[float]:
        if refs is not None:
            check_pairs(hyps, refs)
        out = []
        for h in hyps:
            ok, value = parse_json(h, self.allow_fences)
            out.append(1.0 if ok and self._validator.is_valid(value) else 0.0)
        return out

    def signature(self) -> str:
        import hashlib

        digest = hashlib.sha256(orjson.dumps(self.schema, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
        return (f"json_schema|schema:sha256:{digest}|{self._draft}|fences:{'allow' if self.allow_fences else 'no'}|"
                f"jsonschema:{_ver()}")


def _ver() -> str:
    import importlib.metadata as md

    return md.version("jsonschema")


METRICS = {"json_valid": JsonValid, "json_schema": JsonSchemaValid}
