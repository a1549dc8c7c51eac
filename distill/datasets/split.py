"""Train/validation splits: seeded random, stratified by label, or grouped by a key.

Assignments depend only on the inputs and the seed, so rebuilding a dataset with the same options
gives the same split. Grouping keeps every example of a group (a session, a user) on one side:
otherwise validation measures memorised conversations, not generalisation.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence


def _n_validation(n: int, fraction: float) -> int:
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def random_split(n: int, fraction: float, seed: int = 0) -> bytearray:
    """``out[i] == 1`` puts example ``i`` in validation."""
    out = bytearray(n)
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    for i in idx[: _n_validation(n, fraction)]:
        out[i] = 1
    return out


def stratified_split(labels: Sequence[Hashable], fraction: float, seed: int = 0) -> bytearray:
    """Each label's share of validation equals ``fraction`` (rounded per label)."""
    out = bytearray(len(labels))
    by_label: dict[Hashable, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    rng = random.Random(seed)
    for label in sorted(by_label, key=lambda x: (x is None, str(x))):
        idx = by_label[label]
        rng.shuffle(idx)
        k = round(len(idx) * fraction) if fraction > 0 else 0
        for i in idx[:k]:
            out[i] = 1
    return out


def grouped_split(groups: Sequence[Hashable | None], fraction: float, seed: int = 0) -> bytearray:
    """Whole groups go to validation until it holds ``fraction`` of the examples.

    An example without a group value is a group of its own.
    """
    n = len(groups)
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[("g", g) if g is not None else ("i", i)].append(i)
    keys = sorted(members, key=lambda k: (k[0], str(k[1])))
    random.Random(seed).shuffle(keys)
    target = _n_validation(n, fraction)
    out = bytearray(n)
    taken = 0
    for key in keys:
        if taken >= target:
            break
        if taken + len(members[key]) >= n:  # never put every example in validation
            continue
        for i in members[key]:
            out[i] = 1
        taken += len(members[key])
    return out


def assign_splits(
    n: int,
    fraction: float,
    seed: int = 0,
    labels: Sequence[Hashable] | None = None,
    groups: Sequence[Hashable | None] | None = None,
) -> bytearray:
    if groups is not None:
        return grouped_split(groups, fraction, seed)
    if labels is not None:
        return stratified_split(labels, fraction, seed)
    return random_split(n, fraction, seed)


__all__ = ["assign_splits", "grouped_split", "random_split", "stratified_split"]
