"""Token counts, epochs and training cost for a dataset card.

Captured traffic already carries exact usage (``prompt_tokens`` + ``completion_tokens``), so the
builder counts tokens from the store and estimates (~4 characters a token) only what the teacher
never counted: a corrected answer, a pruned system prompt, traffic captured without usage.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

CHARS_PER_TOKEN = 4

# Training price in USD per 1M training tokens (OpenAI pricing page, supervised fine-tuning).
# Overridable per build: prices change, and self-hosted students cost something else entirely.
TRAINING_PRICE_PER_MILLION: dict[str, float] = {
    "gpt-4o-mini": 3.00,
    "gpt-4o": 25.00,
    "gpt-4.1-nano": 1.50,
    "gpt-4.1-mini": 5.00,
    "gpt-4.1": 25.00,
    "gpt-3.5-turbo": 8.00,
}

# Longest training example per base model (longer ones are truncated from the end by OpenAI).
MAX_TOKENS_PER_EXAMPLE: dict[str, int] = {
    "gpt-4o-mini": 65_536,
    "gpt-4o": 65_536,
    "gpt-4.1-nano": 65_536,
    "gpt-4.1-mini": 65_536,
    "gpt-4.1": 65_536,
    "gpt-3.5-turbo": 16_385,
}
DEFAULT_MAX_TOKENS = 65_536

# The cookbook's epoch heuristic (openai-api.md 6.5).
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def _lookup(table: dict[str, Any], model: str, default: Any) -> Any:
    """Longest key that prefixes the model name (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``)."""
    best = None
    for key in table:
        if model.startswith(key) and (best is None or len(key) > len(best)):
            best = key
    return table[best] if best is not None else default


def price_per_million(model: str, overrides: dict[str, float] | None = None) -> float | None:
    return _lookup({**TRAINING_PRICE_PER_MILLION, **(overrides or {})}, model, None)


def max_tokens_for(model: str) -> int:
    return _lookup(MAX_TOKENS_PER_EXAMPLE, model, DEFAULT_MAX_TOKENS)


def epochs_for(n_examples: int) -> int:
    if n_examples <= 0:
        return 0
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def estimate_text(text: str | None) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN if text else 0


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return 0


def estimate_messages(messages: list[dict[str, Any]]) -> int:
    """The cookbook's count (3 per message, 1 per name, 3 priming) with ~4 chars per token."""
    chars = 0
    n = 3
    for m in messages:
        if not isinstance(m, dict):
            continue
        n += 3 + (1 if m.get("name") else 0)
        chars += _content_chars(m.get("content"))
        for call in m.get("tool_calls") or ():
            fn = (call or {}).get("function") or {}
            chars += len(fn.get("name") or "") + len(fn.get("arguments") or "")
    return n + (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


@dataclass
class TokenStats:
    """Running token statistics (an int array, not a list of objects: datasets reach millions)."""

    values: array = field(default_factory=lambda: array("q"))
    exact: int = 0
    estimated: int = 0

    def add(self, tokens: int, exact: bool) -> None:
        self.values.append(int(tokens))
        if exact:
            self.exact += 1
        else:
            self.estimated += 1

    def summary(self) -> dict[str, Any]:
        n = len(self.values)
        if not n:
            return {"examples": 0, "total": 0, "min": 0, "median": 0, "mean": 0.0, "max": 0, "exact": 0, "estimated": 0}
        ordered = sorted(self.values)
        total = sum(ordered)
        return {
            "examples": n,
            "total": total,
            "min": ordered[0],
            "median": ordered[n // 2],
            "mean": round(total / n, 1),
            "max": ordered[-1],
            "exact": self.exact,
            "estimated": self.estimated,
        }


def training_estimate(train_tokens: int, n_train: int, model: str, n_epochs: int | None = None,
                      prices: dict[str, float] | None = None) -> dict[str, Any]:
    epochs = n_epochs or epochs_for(n_train)
    billed = train_tokens * epochs
    price = price_per_million(model, prices)
    return {
        "base_model": model,
        "epochs": epochs,
        "epochs_source": "given" if n_epochs else "cookbook heuristic",
        "training_tokens": billed,
        "price_per_million": price,
        "estimated_cost_usd": None if price is None else round(billed / 1_000_000 * price, 4),
    }


__all__ = [
    "TRAINING_PRICE_PER_MILLION",
    "TokenStats",
    "epochs_for",
    "estimate_messages",
    "estimate_text",
    "max_tokens_for",
    "price_per_million",
    "training_estimate",
]
