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

import orjson

Comparator = Callable[[str, str], bool]

_WS = re.compile(r"\s+")
_EDGE_PUNCT = " \t\r\n\"'`.,;:!?()[]{}<>*_"
_PREFIX = re.compile(r"^(?:label|category|class|answer|intent|sentiment)\s*[:=-]\s*", re.IGNORECASE)
_LABEL_KEYS = ("label", "category", "class", "intent", "answer", "sentiment")


def response_text(response: str | dict[str, Any] | None) -> str:
    """The assistant text of a stored ``chat.completion`` (JSON text or dict); tool calls as JSON."""
    if response is None:
        return ""
    obj = orjson.loads(response) if isinstance(response, (str, bytes)) else response
    choices = obj.get("choices") or []
    if not choices:
        return ""
    msg = choices[0].get("message") or {}
    content = msg.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content:
        return str(content)
    if msg.get("tool_calls"):
        return orjson.dumps([(t.get("function") or {}) for t in msg["tool_calls"]], option=orjson.OPT_SORT_KEYS).decode()
    return ""


def normalise_text(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def normalise_label(text: str) -> str:
    """``{"label": "Spam"}``, ``Category: spam.`` and ``spam`` all become ``spam``."""
    t = unicodedata.normalize("NFKC", text).strip()
    if t[:1] in "{[":
        try:
            obj = orjson.loads(t)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            for key in _LABEL_KEYS:
                if isinstance(obj.get(key), (str, int, float, bool)):
                    t = str(obj[key])
                    break
            else:
                if len(obj) == 1 and isinstance(next(iter(obj.values())), (str, int, float, bool)):
                    t = str(next(iter(obj.values())))
        elif isinstance(obj, list) and len(obj) == 1 and isinstance(obj[0], str):
            t = obj[0]
    t = _PREFIX.sub("", t.strip())
    return _WS.sub(" ", t.strip(_EDGE_PUNCT)).casefold()


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
    from protege.store import auto as store_auto

    rows = store_auto.paired_answers(store, policy.match.model, policy.match.metadata, after_seq=route.stage_started_seq)
    compare = get_comparator(policy.rollout.comparison, policy.rollout.similarity_threshold)
    return agreement(((response_text(p), response_text(s)) for p, s, _a, _b in rows), compare)
