"""Split properties: seeded determinism, stratified proportions, groups never straddle."""

from __future__ import annotations

from collections import Counter, defaultdict

from protege.distill.datasets.split import (
    assign_splits,
    grouped_split,
    random_split,
    stratified_split,
)


def test_random_split_is_seeded_and_sized():
    a = random_split(1000, 0.1, seed=7)
    assert a == random_split(1000, 0.1, seed=7)
    assert a != random_split(1000, 0.1, seed=8)
    assert sum(a) == 100
    assert sum(random_split(5, 0.0)) == 0
    assert sum(random_split(3, 0.1)) == 1  # at least one validation example when asked for


def test_stratified_keeps_label_proportions():
    labels = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    s = stratified_split(labels, 0.2, seed=1)
    per = Counter(label for label, v in zip(labels, s) if v)
    assert per == {"a": 120, "b": 60, "c": 20}
    assert s == stratified_split(labels, 0.2, seed=1)


def test_groups_never_straddle():
    groups = [f"session{i // 7}" for i in range(700)] + [None] * 50
    s = grouped_split(groups, 0.25, seed=3)
    sides = defaultdict(set)
    for g, v in zip(groups, s):
        if g is not None:
            sides[g].add(v)
    assert all(len(v) == 1 for v in sides.values())
    assert 0.2 <= sum(s) / len(s) <= 0.3
    assert s == grouped_split(groups, 0.25, seed=3)


def test_single_group_never_all_validation():
    assert sum(grouped_split(["x"] * 10, 0.5)) == 0


def test_assign_splits_dispatch():
    assert assign_splits(10, 0.2, 1, groups=["g"] * 10) == grouped_split(["g"] * 10, 0.2, 1)
    assert assign_splits(4, 0.5, 1, labels=list("aabb")) == stratified_split(list("aabb"), 0.5, 1)
