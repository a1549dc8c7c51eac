"""Which captures become training examples: options turned into the store's SQL selection.

Refusals are detected two ways: the API's own ``message.refusal`` field, and phrases that models
use when they decline. The phrase list is configurable because it is language- and model-specific;
it is matched (escaped, lower-cased) near the start of the answer, where refusals are phrased.
"""

from __future__ import annotations

from collections.abc import Iterable

from protege.store.datasets import Selection

from protege.distill.datasets.scrub import TRIGGER

DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = (
    "i'm sorry, but i can't",
    "i’m sorry, but i can’t",
    "i am sorry, but i cannot",
    "i'm sorry, i can't",
    "i can't help with that",
    "i can’t help with that",
    "i cannot help with that",
    "i can't assist with that",
    "i can’t assist with that",
    "i cannot assist with that",
    "i'm unable to help with",
    "i am unable to help with",
    "i'm not able to help with",
    "as an ai language model",
)


_SPECIAL = set("\\.^$|?*+()[]{}")


def _escape(text: str) -> str:
    """Escape for both RE2 (DuckDB) and Python: only the metacharacters, never spaces or quotes."""
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


def refusal_regex(phrases: Iterable[str]) -> str | None:
    """A regex (for the store, as a bound parameter) matched against the answer's first 260 chars."""
    escaped = [_escape(p.lower()) for p in phrases if p]
    if not escaped:
        return None
    return "(?:" + "|".join(escaped) + ")"


def is_refusal(answer: str | None, phrases: Iterable[str] = DEFAULT_REFUSAL_PHRASES) -> bool:
    head = (answer or "")[:260].lower()
    return any(p.lower() in head for p in phrases)


def selection_from(options) -> Selection:  # options: DatasetOptions
    return Selection(
        models=list(options.models),
        metadata=dict(options.metadata),
        since=options.since,
        until=options.until,
        require_ok=options.require_ok,
        exclude_students=options.exclude_students,
        finish_reasons=list(options.finish_reasons) if options.finish_reasons else None,
        exclude_refusals=options.exclude_refusals,
        refusal_pattern=refusal_regex(options.refusal_phrases) if options.exclude_refusals else None,
        refusal_phrases=[p.lower() for p in options.refusal_phrases if p] if options.exclude_refusals else None,
        min_score=options.min_score,
        exclude_rejected=options.exclude_rejected,
        dedupe=options.dedupe,
        scrub_trigger=TRIGGER if options.scrub else None,
    )


__all__ = ["DEFAULT_REFUSAL_PHRASES", "is_refusal", "refusal_regex", "selection_from"]
