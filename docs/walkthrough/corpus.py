"""The walkthrough's labelled questions: chatterbot-corpus (offline, inside its PyPI wheel).

Each English YAML file of the corpus is one topic; the first line of each conversation is a
question. The walkthrough keeps the four largest topics so that a small student has enough
examples of each (``tech support`` is named ``tech``). Both the stand-in teacher (which answers
with the topic) and the application (which sends the questions) read this one list, so they agree
on it without talking to each other.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

# corpus file -> the label the teacher answers
TOPICS = {"tech_support": "tech", "trivia": "trivia", "coding": "coding", "ai": "ai"}


@functools.lru_cache(maxsize=1)
def questions() -> list[tuple[str, str]]:
    """(question, topic) pairs, unique by question, in a fixed shuffled order (seed 0)."""
    import chatterbot_corpus
    import yaml

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    items: dict[str, str] = {}
    for name, label in TOPICS.items():
        for conv in yaml.safe_load((root / f"{name}.yml").read_text(encoding="utf-8"))["conversations"]:
            if conv and isinstance(conv[0], str) and conv[0].strip():
                items.setdefault(conv[0].strip(), label)
    out = sorted(items.items())
    random.Random(0).shuffle(out)
    return out
