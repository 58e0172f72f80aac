"""Bucketing shared by cluster/histogram/MAUVE: PCA against an independent SVD, deterministic
k-means, nearest-centroid assignment against brute force, lossless storage."""
from __future__ import annotations

import numpy as np
import pytest

from dpinstruct.embeddings import bucketing


def clustered(n=600, d=32, k=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    return (centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_pca_matches_an_independent_svd():
    x = bucketing.l2_normalise(clustered())
    mean, components, reached = bucketing.fit_pca(x, 0.9)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    share = np.cumsum(s ** 2) / np.sum(s ** 2)
    p = int(np.argmax(share >= 0.9) + 1)
    assert components.shape == (p, x.shape[1]) and reached == pytest.approx(share[p - 1], abs=1e-5)
    assert np.allclose(components @ components.T, np.eye(p), atol=1e-4)
    assert np.allclose(np.abs(components @ vt[:p].T), np.eye(p), atol=1e-3)  # same axes, up to sign
    assert np.allclose(mean, x.mean(0), atol=1e-6)


def test_fit_is_deterministic_and_records_the_subsampling():
    x = clustered()
    a = bucketing.fit(x, explained_variance=0.9, k=6, niter=20, nredo=2, seed=3, max_points_per_centroid=50)
    b = bucketing.fit(x, explained_variance=0.9, k=6, niter=20, nredo=2, seed=3, max_points_per_centroid=50)
    assert np.array_equal(a.centroids, b.centroids) and np.array_equal(a.components, b.components)
    assert a.info["kmeans_trained_on"] == 300 and a.info["max_points_per_centroid"] == 50


def test_assign_is_the_nearest_centroid_in_pca_space():
    x = clustered()
    b = bucketing.fit(x, explained_variance=0.9, k=6, niter=20, nredo=1, seed=0, max_points_per_centroid=256)
    other = clustered(n=200, seed=1)
    points = b.project(other)
    brute = ((points[:, None, :] - b.centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(b.assign(other), brute)
    assert len(np.unique(b.assign(x))) == 6


def test_storage_round_trip():
    x = clustered()
    b = bucketing.fit(x, explained_variance=0.8, k=4, niter=10, nredo=1, seed=0, max_points_per_centroid=256)
    back = bucketing.from_table(bucketing.to_table(b), b.info)
    assert np.array_equal(back.centroids, b.centroids) and np.array_equal(back.mean, b.mean)
    assert np.array_equal(back.assign(x), b.assign(x))


def test_fewer_points_than_clusters_is_refused():
    with pytest.raises(ValueError, match="at least K=10"):
        bucketing.fit(clustered(n=5), explained_variance=0.9, k=10, niter=5, nredo=1, seed=0, max_points_per_centroid=256)
