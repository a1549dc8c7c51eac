"""The label distribution of a dataset: what each example's answer says, as the label metrics read it.

A label-like dataset (classification, routing, moderation) is only as good as its balance: a class
with 3 examples in 2,000 will not be learned, and the card is where one should see that before
paying for training. Labels are the answers read by the one label rule of Protege
(:func:`protege.store.messages.normalise_label`), so ``{"label": "Spam"}`` and ``spam`` count as one
class here exactly as they score as one class in ``label_accuracy``.

Free-form answers have as many "labels" as examples; the tally stops adding classes after
:data:`MAX_TRACKED` (counting the rest as ``other``) so that a million free-form answers cost no
more memory than a thousand, and says the answers look free-form. The builder stops reading a
batch's answers as labels once they prove free-form (``None``, counted as ``not_read``), so
free-form datasets pay almost nothing for a distribution they do not have.
"""

from __future__ import annotations

from typing import Any

from protege.store.messages import message_text, normalise_label

MAX_TRACKED = 1000  # distinct classes kept; more are counted together
MAX_LABEL_CHARS = 200  # a label longer than this is cut (free-form answers, not classes)
FREE_FORM_SHARE = 0.5  # more distinct labels than this share of examples: not a label-like task


def answer_label(answer: dict[str, Any]) -> str:
    """The class an assistant message states (its text, or its tool calls as JSON), normalised."""
    return normalise_label(message_text(answer))[:MAX_LABEL_CHARS]


class LabelTally:
    """Counts per label and split; :meth:`summary` is what the card and the dataset object show."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.other = [0, 0]
        self.overflow = False
        self.not_read = 0  # free-form answers the builder did not read as labels

    def add(self, label: str | None, is_val: int) -> None:
        if label is None:
            self.not_read += 1
            self.other[is_val] += 1
            return
        c = self.counts.get(label)
        if c is None:
            if len(self.counts) >= MAX_TRACKED:
                self.overflow = True
                self.other[is_val] += 1
                return
            c = self.counts[label] = [0, 0]
        c[is_val] += 1

    def summary(self, top: int = 50) -> dict[str, Any]:
        """``{"rule", "examples", "distinct", "free_form", "labels": [{label, count, share, train, validation}], "other"}``,
        most frequent first (ties by label), at most ``top`` labels; the rest are summed in ``other``."""
        total = sum(a + b for a, b in self.counts.values()) + sum(self.other)
        ordered = sorted(self.counts.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))
        shown, rest = ordered[:top], ordered[top:]
        other_train = self.other[0] + sum(c[0] for _, c in rest)
        other_val = self.other[1] + sum(c[1] for _, c in rest)
        distinct = len(self.counts)
        return {
            "rule": "protege.store.messages.normalise_label",
            "examples": total,
            "distinct": distinct,
            "distinct_is_lower_bound": self.overflow or self.not_read > 0,
            "not_read": self.not_read,
            "free_form": self.not_read > 0 or (total >= 20 and distinct > FREE_FORM_SHARE * total),
            "labels": [
                {"label": label, "count": tr + va, "share": round((tr + va) / total, 4) if total else 0.0, "train": tr, "validation": va}
                for label, (tr, va) in shown
            ],
            "other": None if not (other_train or other_val) else {
                "labels": len(rest), "count": other_train + other_val,
                "share": round((other_train + other_val) / total, 4) if total else 0.0, "train": other_train, "validation": other_val,
                "note": "labels past the top ones" + (f", and answers past the first {MAX_TRACKED} distinct labels" if self.overflow else "")
                        + (f", and {self.not_read} free-form answers not read as labels" if self.not_read else ""),
            },
        }


__all__ = ["MAX_TRACKED", "LabelTally", "answer_label"]
