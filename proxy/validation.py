"""Request checks that OpenAI itself makes and that Protege must make before capturing."""

from __future__ import annotations

from typing import Any, Iterable

MAX_KEYS = 16
MAX_KEY_LEN = 64
MAX_VALUE_LEN = 512


def metadata_error(metadata: Any) -> tuple[str, str] | None:
    """(message, code) for metadata OpenAI would reject, else None. Texts follow OpenAI's."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return (f"Invalid type for 'metadata': expected an object, but got {type(metadata).__name__} instead.", "invalid_type")
    if len(metadata) > MAX_KEYS:
        return (
            "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
            f"but got an object with {len(metadata)} properties instead.",
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > MAX_KEY_LEN:
            return (
                f"Invalid 'metadata': string too long. Expected a key with maximum length {MAX_KEY_LEN}, "
                f"but got a key with length {len(key)} instead.",
                "string_above_max_length",
            )
        if not isinstance(value, str):
            return (
                f"Invalid type for 'metadata.{key}': expected a string, but got {type(value).__name__} instead.",
                "invalid_type",
            )
        if len(value) > MAX_VALUE_LEN:
            return (
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"{MAX_VALUE_LEN}, but got a string with length {len(value)} instead.",
                "string_above_max_length",
            )
    return None


class FilterError(ValueError):
    """A list filter OpenAI would reject: ``(message, param, code)`` for the 400 error JSON."""

    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def metadata_filter(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``metadata[<key>]=<value>`` query parameters (the SDK's bracket encoding) as a dict.

    A parameter that starts like one but is not well formed (``metadata``, ``metadata[]``,
    ``metadata[a``, ``metadata[a][b]``), a repeated key, or keys/values past metadata's own
    limits raise :class:`FilterError`: silently ignoring a filter would return rows the
    caller asked to exclude.
    """
    out: dict[str, str] = {}
    for name, value in items:
        if name != "metadata" and not name.startswith("metadata["):
            continue
        key = name[len("metadata[") : -1] if name.startswith("metadata[") and name.endswith("]") else None
        if key is None or not key or "[" in key or "]" in key:
            raise FilterError(
                f"Invalid query parameter {name!r}: filter by metadata as metadata[<key>]=<value>, "
                "with a non-empty key and no nested brackets.",
                "metadata",
            )
        if key in out:
            raise FilterError(f"Invalid query parameter {name!r}: the key {key!r} is given more than once.", "metadata")
        if len(key) > MAX_KEY_LEN:
            raise FilterError(
                f"Invalid 'metadata': string too long. Expected a key with maximum length {MAX_KEY_LEN}, "
                f"but got a key with length {len(key)} instead.",
                "metadata", "string_above_max_length",
            )
        if len(value) > MAX_VALUE_LEN:
            raise FilterError(
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"{MAX_VALUE_LEN}, but got a string with length {len(value)} instead.",
                "metadata", "string_above_max_length",
            )
        out[key] = value
    if len(out) > MAX_KEYS:
        raise FilterError(
            f"Invalid 'metadata': too many properties. Expected an object with at most {MAX_KEYS} properties, "
            f"but got an object with {len(out)} properties instead.",
            "metadata", "object_above_max_properties",
        )
    return out


def stream_options_error(req: dict[str, Any]) -> tuple[str, str] | None:
    """(message, code) for a ``stream_options`` OpenAI would reject (not an object, or a
    non-boolean ``include_usage``), else None. ``param`` is ``stream_options``."""
    opts = req.get("stream_options")
    if opts is None:
        return None
    if not isinstance(opts, dict):
        return (
            f"Invalid type for 'stream_options': expected an object, but got {_json_type(opts)} instead.",
            "invalid_type",
        )
    usage = opts.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        return (
            f"Invalid type for 'stream_options.include_usage': expected a boolean, but got {_json_type(usage)} instead.",
            "invalid_type",
        )
    return None


def _json_type(value: Any) -> str:
    """OpenAI names JSON types in its messages ("a string", "an array")."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
