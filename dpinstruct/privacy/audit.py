"""The statistics of a one-run privacy audit (Steinke, Nasr, Jagielski, NeurIPS 2023).

Set-up: m canaries, each included in the training data independently with probability 1/2. After
training, an auditor who sees only the model guesses "in" for the k highest-scoring canaries and
"out" for the k lowest (abstaining on the rest): r = 2k guesses, v of them correct.

If training is (eps, delta)-DP for add/remove one record, each guess is, in effect, randomised
response with accuracy at most q = e^eps / (1 + e^eps), so (their Theorem 5.2)

    P[v' >= v] <= beta + 2 m delta alpha,   beta = P[Binomial(r, q) >= v],
    alpha = max_{1 <= i <= v}  P[v - i <= Binomial(r, q) < v] / i,

and an observed v with that bound <= 1 - confidence refutes (eps, delta)-DP. The lower bound is the
largest eps refuted at the stated confidence (0 when none is). Choosing k after seeing which guesses
were right would invalidate the bound, so k comes from a fixed grid and every k is tested at
(1 - confidence) / len(grid) (Bonferroni): the reported bound holds at ``confidence`` jointly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

# fractions of the canaries guessed on each side (k = fraction x m), fixed before any score is seen
GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least v correct guesses out of r under (epsilon, delta)-DP with m canaries."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v} r={r} m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    below = stats.binom.sf(v - i - 1, r, q) - beta  # P[v - i <= Binomial(r, q) < v]
    alpha = float(np.max(below / i))
    return min(beta + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, *, significance: float, delta: float,
                        tolerance: float = 1e-6) -> float:
    """The largest epsilon whose (epsilon, delta)-DP claim the observation (r, v) refutes at
    ``significance``, found by bisection (the p-value grows with epsilon); 0 if none is refuted."""
    if p_value(m, r, v, 0.0, delta) > significance:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) <= significance:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            return math.inf  # only possible with r = v and delta = 0 at astronomically many guesses
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) <= significance else (lo, mid)
    return lo


def guesses(scores: np.ndarray, included: np.ndarray, k: int) -> tuple[int, int]:
    """(r, v): guess "in" for the k highest scores and "out" for the k lowest; ties broken by index."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    k = min(k, len(order) // 2)
    top, bottom = order[:k], order[len(order) - k:]
    return 2 * k, int(included[top].sum() + (~included[bottom]).sum())


@dataclass(frozen=True)
class AuditResult:
    canaries: int
    included: int
    confidence: float
    delta: float
    lower_bound: float
    guesses: int          # r at the k that gave the bound
    correct: int          # v at that k
    grid: list            # [{"k", "guesses", "correct", "lower_bound"}] for every k tested

    def as_dict(self) -> dict:
        return asdict(self)


def audit(scores: np.ndarray, included: np.ndarray, *, confidence: float, delta: float,
          fractions: tuple = GUESS_FRACTIONS) -> AuditResult:
    """The one-run lower bound over the fixed grid of guess counts, Bonferroni-corrected."""
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if m != len(included) or m < 2:
        raise ValueError(f"need one inclusion flag per score and at least 2 canaries, got {m} and {len(included)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ks = sorted({max(1, round(f * m)) for f in fractions})
    significance = (1 - confidence) / len(ks)
    grid = []
    for k in ks:
        r, v = guesses(scores, included, k)
        grid.append({"k": k, "guesses": r, "correct": v,
                     "lower_bound": epsilon_lower_bound(m, r, v, significance=significance, delta=delta)})
    best = max(grid, key=lambda g: g["lower_bound"])
    return AuditResult(m, int(included.sum()), confidence, delta, best["lower_bound"], best["guesses"],
                       best["correct"], grid)
