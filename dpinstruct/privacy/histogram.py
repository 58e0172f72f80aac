"""The DP histogram of Algorithm 2 (Yu et al. 2024): noisy counts of private records per bucket.

Every record votes once, for its bucket, so adding or removing one record changes exactly one count
by 1: L2 sensitivity 1 under add/remove-one. Independent Gaussian noise N(0, sigma^2) goes on every
one of the K counts (empty buckets included), drawn from a DP random stream (``randomness``), and
negatives are clipped to 0, which is post-processing. Event: ``accounting.histogram_event(sigma)``.
"""
from __future__ import annotations

import numpy as np

from dpinstruct.privacy.randomness import DPRandom


def exact_counts(labels: np.ndarray, k: int) -> np.ndarray:
    """Records per bucket (float64, length k) from each record's bucket index. Private: never released."""
    return np.bincount(labels, minlength=k).astype(np.float64)


def gaussian_noise(k: int, sigma: float, random: DPRandom) -> np.ndarray:
    return np.zeros(k) if sigma == 0 else random.normal((k,), sigma)


def noisy_histogram(labels: np.ndarray, k: int, sigma: float, random: DPRandom) -> np.ndarray:
    """The released histogram: exact counts + N(0, sigma^2) per bucket, clipped at 0."""
    return release(exact_counts(labels, k), sigma, random)


def release(counts: np.ndarray, sigma: float, random: DPRandom) -> np.ndarray:
    """Counts of L2 sensitivity 1 (record votes, or user-level shares) + N(0, sigma^2) each, clipped at 0."""
    return np.clip(counts + gaussian_noise(len(counts), sigma, random), 0.0, None)
