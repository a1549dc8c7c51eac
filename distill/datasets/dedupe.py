"""Near-duplicate removal (exact duplicates are removed in SQL by the store).

Near duplicates (the same question with a different greeting, a typo) teach the student nothing
new and over-weight a few conversations. MinHash over word shingles with LSH banding finds
candidate pairs in ~linear time; each candidate pair is then confirmed with the exact Jaccard
similarity, so the threshold means what it says. Opt-in: it needs every example's text in memory.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_PRIME = (1 << 61) - 1


def shingles(text: str, k: int = 3) -> set[int]:
    words = _WORD.findall(text.lower())
    if len(words) < k:
        return {zlib.crc32(" ".join(words).encode())} if words else set()
    return {zlib.crc32(" ".join(words[i : i + k]).encode()) for i in range(len(words) - k + 1)}


def jaccard(a: set[int], b: set[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(texts: Sequence[str], threshold: float = 0.85, num_perm: int = 64, seed: int = 1) -> set[int]:
    """Indices to drop: each one is at least ``threshold`` Jaccard-similar to an earlier kept text."""
    if len(texts) < 2:
        return set()
    bands = 16 if threshold >= 0.7 else 32
    rows = num_perm // bands
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)
    sets = [shingles(t) for t in texts]
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for i, sh in enumerate(sets):
        if not sh:
            continue
        x = np.fromiter(sh, dtype=np.uint64, count=len(sh))
        # Universal hashing (a*x + b); uint64 overflow wraps, which is fine for MinHash.
        sig = ((np.outer(x, a) + b) >> np.uint64(3)).min(axis=0)
        for band in range(bands):
            buckets[(band, sig[band * rows : (band + 1) * rows].tobytes())].append(i)
    drop: set[int] = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        for pos, j in enumerate(members):
            if j in drop:
                continue
            for i in members[:pos]:
                if i not in drop and jaccard(sets[i], sets[j]) >= threshold:
                    drop.add(j)
                    break
    return drop


__all__ = ["jaccard", "near_duplicates", "shingles"]
