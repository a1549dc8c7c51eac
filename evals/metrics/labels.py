"""Label accuracy, macro precision/recall/F1 and a confusion matrix (scikit-learn), for classification tasks.

The label is taken from the whole output, a regex group, or a JSON field (:class:`LabelExtractor`).
An output whose label cannot be extracted gets the label :data:`MISSING` (so it counts as wrong
against any real reference label) rather than being dropped -- dropping unparseable outputs would
flatter a student that fails to follow the format. ``average`` and ``zero_division`` are passed to scikit-learn explicitly (its default
``average='binary'`` silently breaks on multi-class data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import orjson

from protege.evals.metrics.base import Metric, check_pairs

MISSING = "<missing>"


@dataclass
class LabelExtractor:
    """``source``: ``"whole"`` (stripped output), ``"regex"`` (``pattern`` group ``group``), ``"json"``
    (``field``, dotted path for nested objects) or ``"normalised"`` (Protege's one class per meaning,
    :func:`protege.store.messages.normalise_label`, as the auto gate and online agreement compare
    labels). ``lowercase`` folds case after extraction."""

    source: str = "whole"
    pattern: str | None = None
    group: int | str = 1
    field: str | None = None
    lowercase: bool = False
    strip: bool = True

    def __post_init__(self) -> None:
        if self.source not in ("whole", "regex", "json", "normalised"):
            raise ValueError(f"label source must be 'whole', 'regex', 'json' or 'normalised', not {self.source!r}")
        if self.source == "regex":
            if not self.pattern:
                raise ValueError("label source 'regex' needs a pattern")
            try:
                self._re = re.compile(self.pattern, re.DOTALL)
            except re.error as exc:
                raise ValueError(f"invalid label regex {self.pattern!r}: {exc}") from None
        if self.source == "json" and not self.field:
            raise ValueError("label source 'json' needs a field")

    def extract(self, text: str) -> str:
        value: Any
        if self.source == "whole":
            value = text
        elif self.source == "normalised":
            # here, not at the top: loading a metric must not pay for importing the whole store
            from protege.store.messages import normalise_label

            value = normalise_label(text)
        elif self.source == "regex":
            m = self._re.search(text)
            if m is None:
                return MISSING
            try:
                value = m.group(self.group)
            except IndexError:
                raise ValueError(f"label regex {self.pattern!r} has no group {self.group!r}") from None
            if value is None:
                return MISSING
        else:
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                return MISSING
            for part in self.field.split("."):
                if not isinstance(value, dict) or part not in value:
                    return MISSING
                value = value[part]
            if isinstance(value, (dict, list)) or value is None:
                return MISSING
            if isinstance(value, bool):
                value = "true" if value else "false"
        value = str(value)
        if self.strip:
            value = value.strip()
        if self.lowercase:
            value = value.lower()
        return value

    def signature(self) -> str:
        where = {"whole": "whole", "regex": f"regex[{self.pattern}]#{self.group}", "json": f"json[{self.field}]",
                 "normalised": "normalised"}
        return f"label:{where[self.source]}|lc:{'yes' if self.lowercase else 'no'}"


@dataclass
class LabelReport:
    n: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    average: str
    zero_division: float
    labels: list[str]
    confusion: list[list[int]]  # rows = reference label, columns = predicted label, order = labels
    missing: int  # outputs whose label could not be extracted


def _labels(extractor: LabelExtractor, hyps: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str]]:
    check_pairs(hyps, refs)
    return [extractor.extract(h) for h in hyps], [extractor.extract(r) for r in refs]


def label_report(y_pred: Sequence[str], y_true: Sequence[str], average: str = "macro",
                 zero_division: float = 0.0, labels: Sequence[str] | None = None) -> LabelReport:
    """Accuracy, P/R/F1 and confusion matrix over already-extracted labels."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if len(y_pred) != len(y_true):
        raise ValueError(f"got {len(y_pred)} predicted labels but {len(y_true)} reference labels")
    if not y_true:
        raise ValueError("no items to score")
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=list(labels), average=average,
                                                 zero_division=zero_division)
    cm = confusion_matrix(y_true, y_pred, labels=list(labels))
    return LabelReport(n=len(y_true), accuracy=float(accuracy_score(y_true, y_pred)), precision=float(p),
                       recall=float(r), f1=float(f), average=average, zero_division=float(zero_division),
                       labels=list(labels), confusion=cm.tolist(), missing=sum(1 for y in y_pred if y == MISSING))


class LabelAccuracy(Metric):
    """1.0 per item when the extracted labels agree; binary, so McNemar applies."""

    name = "label_accuracy"
    kind = "mean"
    scale = "binary"

    def __init__(self, extractor: LabelExtractor | None = None, **extractor_options: Any) -> None:
        self.extractor = extractor or LabelExtractor(**extractor_options)

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        pred, true = _labels(self.extractor, hyps, refs)
        return [1.0 if p == t else 0.0 for p, t in zip(pred, true)]

    def report(self, hyps: Sequence[str], refs: Sequence[str], average: str = "macro",
               zero_division: float = 0.0) -> LabelReport:
        pred, true = _labels(self.extractor, hyps, refs)
        return label_report(pred, true, average=average, zero_division=zero_division)

    def signature(self) -> str:
        return f"label_accuracy|{self.extractor.signature()}"


class LabelF1(Metric):
    """Macro (or micro/weighted) F1 over extracted labels; a corpus metric bootstrapped over (true, pred) pairs."""

    kind = "corpus"
    scale = "continuous"

    def __init__(self, extractor: LabelExtractor | None = None, average: str = "macro",
                 zero_division: float = 0.0, **extractor_options: Any) -> None:
        if average not in ("macro", "micro", "weighted"):
            raise ValueError(f"average must be 'macro', 'micro' or 'weighted', not {average!r}")
        self.extractor = extractor or LabelExtractor(**extractor_options)
        self.average, self.zero_division = average, zero_division
        self.name = f"{average}_f1"

    def item_stats(self, hyps: Sequence[str], refs: Sequence[str]) -> list[tuple[str, str]]:
        pred, true = _labels(self.extractor, hyps, refs)
        return list(zip(true, pred))

    def aggregate_stats(self, stats: Sequence[Any]) -> float:
        from sklearn.metrics import f1_score

        if len(stats) == 0:
            return 0.0
        true, pred = zip(*stats)
        return float(f1_score(list(true), list(pred), average=self.average, zero_division=self.zero_division))

    def bootstrap_scores(self, stats: Sequence[Any], counts: Any) -> Any:
        """Macro F1 of each resample from its confusion matrix: the same 2tp / (n_true + n_pred) per label,
        averaged over the labels that occur in that resample, as scikit-learn computes it."""
        import numpy as np

        if self.average != "macro" or len(stats) == 0:
            return None
        labels = sorted({t for t, _ in stats} | {p for _, p in stats})
        pos = {label: i for i, label in enumerate(labels)}
        n_labels = len(labels)
        cells = np.array([pos[t] * n_labels + pos[p] for t, p in stats], dtype=np.int64)
        out = np.empty(counts.shape[0])
        for r, row in enumerate(counts):
            cm = np.bincount(cells, weights=row, minlength=n_labels * n_labels).reshape(n_labels, n_labels)
            tp, n_true, n_pred = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
            present = (n_true + n_pred) > 0
            out[r] = float(np.mean(2 * tp[present] / (n_true[present] + n_pred[present])))
        return out

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        pred, true = _labels(self.extractor, hyps, refs)
        return [1.0 if p == t else 0.0 for p, t in zip(pred, true)]

    def corpus_score(self, hyps: Sequence[str], refs: Sequence[str]) -> float:
        return self.aggregate_stats(self.item_stats(hyps, refs))

    def signature(self) -> str:
        return (f"{self.name}|{self.extractor.signature()}|average:{self.average}|"
                f"zero_division:{self.zero_division}|sklearn")


METRICS = {"label_accuracy": LabelAccuracy, "macro_f1": LabelF1}
