"""Request checks that OpenAI itself makes and that Protege must make before capturing."""

from __future__ import annotations

from typing import Any

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
