"""Online agreement: how often the student and the teacher give the same answer to the same live request.

Pairs come from the store: a second answer captured for a request (``source='shadow'`` with
``paired_with`` = the capture the client got). The comparison is pluggable because "the same" means
different things per task: an identical string, the same label after normalisation, or a fuzzy
similarity above a threshold.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from protege.store.messages import answer_text, normalise_label
from protege.store import auto as store_auto

Comparator = Callable[[str, str], bool]

_WS = re.compile(r"\s+")


# The one answer-text reading and label rule of Protege (store.messages), under this module's names.
response_text = answer_text


def normalise_text(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def exact_equal(a: str, b: str) -> bool:
    return normalise_text(a) == normalise_text(b)


def label_equal(a: str, b: str) -> bool:
    return normalise_label(a) == normalise_label(b)


def similarity_comparator(threshold: float) -> Comparator:
    """rapidfuzz's normalised Indel similarity (0-1) at or above ``threshold``."""
    from rapidfuzz import fuzz

    def similar(a: str, b: str) -> bool:
        return fuzz.ratio(normalise_text(a), normalise_text(b)) / 100.0 >= threshold

    return similar


def get_comparator(kind: str, threshold: float = 0.9) -> Comparator:
    if kind == "exact":
        return exact_equal
    if kind == "label":
        return label_equal
    if kind == "similarity":
        return similarity_comparator(threshold)
    raise ValueError(f"unknown comparison {kind!r} (exact, label or similarity)")


@dataclass
class AgreementResult:
    n: int
    agreed: int
    rate: float | None  # None when nothing was compared

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(pairs: Iterable[tuple[str, str]], compare: Comparator) -> AgreementResult:
    n = agreed = 0
    for a, b in pairs:
        n += 1
        agreed += bool(compare(a, b))
    return AgreementResult(n, agreed, (agreed / n) if n else None)


def online_agreement(store: Any, route: Any, policy: Any) -> AgreementResult:
    """Agreement on live pairs captured since ``route`` entered its current stage."""
    rows = store_auto.paired_answers(store, policy.match.model, policy.match.metadata, after_seq=route.stage_started_seq)
    compare = get_comparator(policy.rollout.comparison, policy.rollout.similarity_threshold)
    return agreement(((response_text(p), response_text(s)) for p, s, _a, _b in rows), compare)
