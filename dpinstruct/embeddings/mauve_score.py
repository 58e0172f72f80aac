"""MAUVE (Pillutla et al., NeurIPS 2021) between two samples of sentence embeddings, quantised with
the pipeline's own bucketing (dpinstruct/embeddings/bucketing.py, the code of Algorithm 2).

MAUVE compares a "model" sample P with a reference sample Q. Both are quantised into the same K
buckets: L2-normalise, PCA to ``explained_variance``, k-means fitted on the UNION of the two
samples; then each sample becomes a histogram over the buckets. The score is the area under the
divergence frontier {(exp(-c KL(Q || R_w)), exp(-c KL(P || R_w)))}, R_w = w P + (1 - w) Q. The
frontier and the area are computed by mauve-text itself (``get_divergence_curve_for_multinomials``,
``compute_area_under_curve``); only the quantisation is ours. This matches mauve-text's
``compute_mauve(p_features, q_features)`` (which also L2-normalises and does not whiten), so scores
agree up to the k-means solution (tested).

1 means indistinguishable at this resolution; lower means farther apart. Defaults follow
mauve-text: K = max(2, round(min(n_p, n_q) / 10)), c = 5, 25 mixture weights, k-means niter 500
and nredo 5. MAUVE of small samples varies with the k-means solution, so ``mauve`` returns the mean
and standard deviation over several k-means seeds.

MAUVE also depends on the sample sizes and on K: fewer points per bucket give noisier histograms
and a lower score, fewer buckets a coarser comparison and a higher one. Scores are therefore only
comparable at equal (n_p, n_q, K). ``resampled`` is the protocol for comparing sets (and
experiments) of different sizes: R draws of exactly ``size`` rows from each set, a fixed K, and the
mean and std over the draws (which covers both sampling and k-means variance).
"""
from __future__ import annotations

import sys

import numpy as np

from dpinstruct.embeddings import bucketing


def _mauve_module():
    import mauve  # noqa: F401  (the package re-exports only the function; its helpers live in the module)

    return sys.modules["mauve.compute_mauve"]


def num_buckets(n_p: int, n_q: int, setting="auto") -> int:
    if setting == "auto":
        return max(2, int(round(min(n_p, n_q) / 10)))
    if int(setting) < 2:
        raise ValueError(f"num_buckets must be 'auto' or an int >= 2, got {setting!r}")
    return int(setting)


def histograms(p: np.ndarray, q: np.ndarray, *, k: int, explained_variance: float, niter: int, nredo: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shares of P and Q over K buckets fitted on their union; ([k], [k])."""
    union = np.vstack([q, p])
    # Every point trains k-means (faiss would otherwise subsample beyond 256 points per centroid).
    buckets = bucketing.fit(union, explained_variance=explained_variance, k=k, niter=niter, nredo=nredo, seed=seed,
                            max_points_per_centroid=max(256, -(-len(union) // k)))
    labels = buckets.assign(union)
    q_counts = np.bincount(labels[:len(q)], minlength=k)
    p_counts = np.bincount(labels[len(q):], minlength=k)
    return p_counts / p_counts.sum(), q_counts / q_counts.sum()


def frontier_area(p_hist: np.ndarray, q_hist: np.ndarray, *, scaling_factor: float = 5.0,
                  discretization: int = 25) -> float:
    """MAUVE of two histograms over the same buckets (mauve-text's frontier and area)."""
    m = _mauve_module()
    weights = np.linspace(1e-6, 1 - 1e-6, discretization)
    x, y = m.get_divergence_curve_for_multinomials(p_hist, q_hist, weights, scaling_factor).T
    i, j = np.argsort(x), np.argsort(y)
    return float(0.5 * (m.compute_area_under_curve(x[i], y[i]) + m.compute_area_under_curve(y[j], x[j])))


def mauve(p: np.ndarray, q: np.ndarray, *, buckets="auto", explained_variance: float = 0.9, niter: int = 500,
          nredo: int = 5, seeds=(0, 1, 2), scaling_factor: float = 5.0, discretization: int = 25) -> dict:
    """MAUVE of embeddings p [n_p, d] against the reference q [n_q, d].

    Returns:
        ``mauve`` (mean over ``seeds``), ``mauve_std``, ``per_seed``, ``num_buckets``, ``n_p``, ``n_q``.
    """
    if len(p) < 2 or len(q) < 2:
        raise ValueError(f"MAUVE needs at least 2 points per sample, got {len(p)} and {len(q)}")
    k = num_buckets(len(p), len(q), buckets)
    scores = [frontier_area(*histograms(p, q, k=k, explained_variance=explained_variance, niter=niter, nredo=nredo,
                                        seed=int(s)), scaling_factor=scaling_factor, discretization=discretization)
              for s in seeds]
    return {"mauve": float(np.mean(scores)), "mauve_std": float(np.std(scores)), "per_seed": scores,
            "num_buckets": k, "n_p": len(p), "n_q": len(q)}


def resampled(p: np.ndarray, q: np.ndarray, *, size: int, repeats: int, seed: int, buckets="auto",
              explained_variance: float = 0.9, niter: int = 500, nredo: int = 5, scaling_factor: float = 5.0,
              discretization: int = 25, reference_seed: int | None = None) -> dict:
    """MAUVE of p against q on ``repeats`` seeded draws of ``size`` rows from each (without
    replacement; all rows of a smaller set, which ``undersized`` then reports), K fixed by
    ``buckets`` for the given size. Draw r uses k-means seed r. With ``reference_seed`` the draws
    of q come from their own stream: sets scored with the same reference seed meet the same
    reference rows at every draw, so their per-draw scores can be compared in pairs.

    Returns:
        ``mauve`` (mean over draws), ``mauve_std``, ``per_draw``, ``num_buckets``, ``n_p``, ``n_q``,
        ``undersized`` (True when p or q has fewer than ``size`` rows: not comparable to full-size scores).
    """
    rng = np.random.default_rng(seed)
    rng_q = rng if reference_seed is None else np.random.default_rng(reference_seed)
    n_p, n_q = min(len(p), size), min(len(q), size)
    k = num_buckets(size, size, buckets)
    scores = []
    for r in range(repeats):
        pi = rng.choice(len(p), size=n_p, replace=False)
        qi = rng_q.choice(len(q), size=n_q, replace=False)
        scores.append(frontier_area(*histograms(p[pi], q[qi], k=k, explained_variance=explained_variance, niter=niter,
                                                nredo=nredo, seed=r),
                                    scaling_factor=scaling_factor, discretization=discretization))
    return {"mauve": float(np.mean(scores)), "mauve_std": float(np.std(scores)), "per_draw": scores,
            "num_buckets": k, "n_p": n_p, "n_q": n_q, "undersized": bool(n_p < size or n_q < size)}
