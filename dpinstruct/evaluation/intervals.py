"""Confidence intervals for the evaluation's figures, each with what it is an interval over.

* ``draws_interval``: a Student-t interval for the mean of R evaluation draws (MAUVE repeats).
  It covers the evaluation's own sampling noise (which rows were drawn), not the training's.
  Paired: when two sets were scored on the same reference draws, the per-draw differences carry
  less noise than the two means do apart.
* ``bootstrap_ratio``: a percentile bootstrap over records of sum(num) / sum(den) (per-token NLL:
  summed NLL over summed tokens), optionally of a paired difference on the same resampled records.
* ``wilson``: the Wilson score interval of a binomial share (pool yield: kept / sampled).
All are two-sided at ``confidence`` and deterministic given their seed (evaluation is not a DP
mechanism: its randomness may be public).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def draws_interval(values, confidence: float = 0.95) -> dict:
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan")}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, *, resamples: int, seed: int, confidence: float = 0.95,
                    minus: np.ndarray | None = None) -> dict:
    """Interval of sum(num)/sum(den) (of (sum(num) - sum(minus))/sum(den) with ``minus``: a paired
    difference, both sides resampled on the same records)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    diff = num if minus is None else num - np.asarray(minus, dtype=float)
    rng = np.random.default_rng(seed)
    estimates = np.empty(resamples)
    for b in range(resamples):
        idx = rng.integers(0, len(num), len(num))
        estimates[b] = diff[idx].sum() / den[idx].sum()
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(estimates, [tail, 100 - tail])
    return {"mean": float(diff.sum() / den.sum()), "lo": float(lo), "hi": float(hi)}


def wilson(k: int, n: int, confidence: float = 0.95) -> dict:
    if n <= 0:
        raise ValueError("wilson: n must be positive")
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at k = 0 or k = n one bound equals p exactly; rounding must not put it on the wrong side
    return {"mean": p, "lo": max(0.0, min(p, centre - half)), "hi": min(1.0, max(p, centre + half))}


def excludes_zero(interval: dict) -> bool:
    return interval["lo"] > 0 or interval["hi"] < 0
