"""Algorithm 2's resampling (Yu et al. 2024): draw the synthetic pool toward a DP histogram.

Bucket k receives floor(target x noisy_k / sum(noisy)) pool rows drawn uniformly without replacement
from its members, or all of them when it has fewer (the shortfall is reported by the caller). Only
DP inputs go in (the pool's bucket labels, the noisy histogram), so the draw is post-processing and
its randomness may come from a public seed.
"""
from __future__ import annotations

import numpy as np


def quotas(noisy: np.ndarray, target: int) -> np.ndarray:
    """floor(target x share) per bucket; all zero when every noisy count is zero."""
    total = noisy.sum()
    return np.zeros(len(noisy), dtype=np.int64) if total <= 0 else np.floor(target * noisy / total).astype(np.int64)


def members(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Row indices of each bucket, ascending (one stable sort instead of a pass per bucket)."""
    order = np.argsort(labels, kind="stable")
    buckets, starts = np.unique(labels[order], return_index=True)
    return {int(k): part for k, part in zip(buckets, np.split(order, starts[1:]))}


def draw(by_bucket: dict[int, np.ndarray], want: np.ndarray, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
    """Row indices drawn per bucket (uniform, without replacement) and how many each bucket got."""
    rows, got = [], np.zeros(len(want), dtype=np.int64)
    for k in range(len(want)):
        pool = by_bucket.get(k, np.empty(0, dtype=np.int64))
        take = min(int(want[k]), len(pool))
        chosen = pool if take == len(pool) else rng.choice(pool, size=take, replace=False)
        rows.extend(sorted(chosen.tolist()))
        got[k] = take
    return rows, got
