"""Pruning a system prompt that most examples share.

The teacher needed long instructions; a fine-tuned student learns the behaviour from the examples
and can be served without them, which is one of the main savings of distillation. The pruned text
and its sha256 are recorded with the dataset version so that serving can strip (or re-add) exactly
that prompt.
"""

from __future__ import annotations

import hashlib
from typing import Any

SYSTEM_ROLES = ("system", "developer")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def choose_prompt(text: str | None, count: int, total: int, min_share: float) -> str | None:
    """The shared prompt when at least ``min_share`` of the examples start with it."""
    if not text or total <= 0 or count / total < min_share:
        return None
    return text


def strip_prompt(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """Drop a leading system/developer message whose content is exactly ``prompt``."""
    if messages and isinstance(messages[0], dict) and messages[0].get("role") in SYSTEM_ROLES and messages[0].get("content") == prompt:
        return messages[1:]
    return messages


__all__ = ["choose_prompt", "sha256_text", "strip_prompt"]
