"""Benchmark of Algorithm 2 at the paper's scale (issue: Algorithm 2).

    .venv/bin/python -m tests.benchmarks.bench_algorithm2 [--pool 1000000] [--private 180000] [--k 1000]
                                                          [--niter 20] [--nredo 1] [--dim 384]

Random Gaussian embeddings (a worst case for PCA: 90% of the variance needs most axes) stand in
for the synthetic pool and the private train set. It times the same code the stages run:
bucketing.fit (PCA + faiss k-means, on the pool only), assigning the pool, the exact private
counts + Gaussian noise (histogram) and resample.quotas/draw, and prints one JSON with the
seconds of each part, the k-means seconds per iteration (k-means cost is niter x nredo x that),
and the peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from dpinstruct.embeddings import bucketing, resampling
from dpinstruct.privacy import histogram
from dpinstruct.privacy.randomness import DPRandom


def main() -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("pool", 1_000_000), ("private", 180_000), ("k", 1000), ("niter", 20), ("nredo", 1),
                          ("dim", 384), ("max_points_per_centroid", 256)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--explained_variance", type=float, default=0.9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((args.pool, args.dim), dtype=np.float32)
    private = rng.standard_normal((args.private, args.dim), dtype=np.float32)
    seconds = {}

    start = time.perf_counter()
    mean, components, reached = bucketing.fit_pca(bucketing.l2_normalise(pool), args.explained_variance)
    seconds["pca"] = time.perf_counter() - start
    start = time.perf_counter()
    buckets = bucketing.fit(pool, explained_variance=args.explained_variance, k=args.k, niter=args.niter,
                            nredo=args.nredo, seed=0, max_points_per_centroid=args.max_points_per_centroid)
    seconds["cluster_fit_total"] = time.perf_counter() - start
    seconds["kmeans"] = seconds["cluster_fit_total"] - seconds["pca"]
    start = time.perf_counter()
    labels = buckets.assign(pool)
    seconds["assign_pool"] = time.perf_counter() - start
    start = time.perf_counter()
    noisy = np.clip(histogram.exact_counts(buckets.assign(private), args.k) + histogram.gaussian_noise(args.k, 10.0, DPRandom(None)),
                    0, None)
    seconds["histogram"] = time.perf_counter() - start
    start = time.perf_counter()
    rows, got = resampling.draw(resampling.members(labels), resampling.quotas(noisy, 300_000), np.random.default_rng(0))
    seconds["resample"] = time.perf_counter() - start
    total = seconds["cluster_fit_total"] + seconds["assign_pool"] + seconds["histogram"] + seconds["resample"]
    print(json.dumps({**vars(args), "pca_components": int(buckets.components.shape[0]), "explained": reached,
                      "kmeans_points": buckets.info["kmeans_trained_on"], "released": len(rows),
                      "seconds": seconds, "total_seconds": total,
                      "kmeans_seconds_per_iteration": seconds["kmeans"] / (args.niter * args.nredo),
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}, indent=2))


if __name__ == "__main__":
    main()
