"""Prices per 1M tokens, so that reports can say what a student costs relative to the teacher.

Prices change and differ by contract, so the table is plain data the user overrides with a TOML or
JSON file (``{"models": {"gpt-4o": {"input": 2.5, "output": 10.0}}}`` or the same without the
``models`` wrapper). The defaults are OpenAI's published standard-tier list prices (USD per 1M
tokens) at the time of writing; they are a starting point, not a quote. Dated snapshots match their
base name by the longest prefix ("gpt-4o-mini-2024-07-18" -> "gpt-4o-mini"). Fine-tuned models
("ft:gpt-4o-mini-2024-07-18:org::id") are priced as their base model unless listed.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Mapping

# model -> {"input": USD per 1M input tokens, "output": USD per 1M output tokens}
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    # Local students served by Protege's proxy run on your own CPU: no per-token price (edit it
    # with a price file to charge your hardware).
    "protege/": {"input": 0.0, "output": 0.0},
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
    "gpt-4-turbo": {"input": 10.00, "output": 30.00},
    "gpt-4": {"input": 30.00, "output": 60.00},
    "gpt-3.5-turbo": {"input": 0.50, "output": 1.50},
    "o1": {"input": 15.00, "output": 60.00},
    "o1-mini": {"input": 1.10, "output": 4.40},
    "o3": {"input": 2.00, "output": 8.00},
    "o3-mini": {"input": 1.10, "output": 4.40},
    "o4-mini": {"input": 1.10, "output": 4.40},
    "gpt-5": {"input": 1.25, "output": 10.00},
    "gpt-5-mini": {"input": 0.25, "output": 2.00},
    "gpt-5-nano": {"input": 0.05, "output": 0.40},
    # Fine-tuned inference costs more than the base model (OpenAI list prices).
    "ft:gpt-4o-mini": {"input": 0.30, "output": 1.20},
    "ft:gpt-4o": {"input": 3.75, "output": 15.00},
    "ft:gpt-4.1-mini": {"input": 0.80, "output": 3.20},
    "ft:gpt-4.1-nano": {"input": 0.20, "output": 0.80},
    "ft:gpt-3.5-turbo": {"input": 3.00, "output": 6.00},
}


class PriceTableError(ValueError):
    pass


def load_prices(path: str | Path | None = None, overrides: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """The default table updated with a TOML/JSON file and then with explicit overrides."""
    table = {k: dict(v) for k, v in DEFAULT_PRICES.items()}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise PriceTableError(f"cannot read price table {p}: {exc.strerror or exc}") from exc
        try:
            data: Any = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise PriceTableError(f"price table {p} is not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: {exc}") from exc
        table.update(_validate(data.get("models", data) if isinstance(data, dict) else data, str(p)))
    if overrides:
        table.update(_validate(overrides, "overrides"))
    return table


def _validate(data: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(data, Mapping):
        raise PriceTableError(f"{where}: expected a table of models")
    out = {}
    for model, entry in data.items():
        if not isinstance(entry, Mapping) or not {"input", "output"} <= set(entry):
            raise PriceTableError(f"{where}: model {model!r} needs numeric 'input' and 'output' prices per 1M tokens")
        try:
            out[str(model)] = {"input": float(entry["input"]), "output": float(entry["output"])}
        except (TypeError, ValueError) as exc:
            raise PriceTableError(f"{where}: model {model!r} has a non-numeric price") from exc
    return out


def price_for(model: str | None, prices: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float] | None:
    """The price entry for a model: exact name, else the longest listed prefix (dated snapshots)."""
    if not model:
        return None
    table = prices if prices is not None else DEFAULT_PRICES
    if model in table:
        return dict(table[model])
    candidates = [model]
    if model.startswith("ft:"):
        base = model[3:].split(":", 1)[0]
        candidates = ["ft:" + base, base]
    for name in candidates:
        best = None
        for key in table:
            if name.startswith(key) and (len(name) == len(key) or key.endswith("/") or name[len(key)] in "-:@") and (best is None or len(key) > len(best)):
                best = key
        if best is not None:
            return dict(table[best])
    return None


def cost(prompt_tokens: int | None, completion_tokens: int | None, price: Mapping[str, float] | None) -> float | None:
    """USD for one call; None when the price or the usage is unknown."""
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * price["input"] + completion_tokens * price["output"]) / 1_000_000


__all__ = ["DEFAULT_PRICES", "PriceTableError", "cost", "load_prices", "price_for"]
