"""Bucketing of sentence embeddings, shared by `cluster`, `histogram` and the MAUVE evaluation.

Algorithm 2 of Yu et al. 2024: embeddings are L2-normalised, reduced by PCA to the smallest
number of components explaining ``explained_variance`` of the variance, and clustered by k-means
(faiss); a point's bucket is its nearest centroid (L2) in that PCA space.

Privacy: ``fit`` must only ever see the SYNTHETIC pool (class dp). The PCA basis and centroids
are then post-processing of DP data, and private embeddings are only ``assign``-ed to buckets,
each private record landing in exactly one bucket (what gives the histogram L2 sensitivity 1).

faiss' k-means silently trains on a random subsample of ``max_points_per_centroid * K`` points;
the value used is a parameter and recorded with the buckets.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class Buckets:
    mean: np.ndarray          # [d] mean of the normalised pool embeddings
    components: np.ndarray    # [p, d] PCA axes (rows), p chosen by explained variance
    centroids: np.ndarray     # [K, p] k-means centroids in PCA space
    info: dict                # explained variance reached, k-means settings, objective

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """[n, d] raw embeddings -> [n, p] float32 points in the PCA space."""
        return ((l2_normalise(embeddings) - self.mean) @ self.components.T).astype(np.float32)

    def assign(self, embeddings: np.ndarray) -> np.ndarray:
        """Index of the nearest centroid of each raw embedding."""
        import faiss

        index = faiss.IndexFlatL2(self.centroids.shape[1])
        index.add(self.centroids.astype(np.float32))
        return index.search(np.ascontiguousarray(self.project(embeddings)), 1)[1][:, 0].astype(np.int64)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def fit_pca(x: np.ndarray, explained_variance: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, components [p, d], variance explained) of normalised x; the d x d covariance is
    accumulated in float64 so the cost is one pass over x, whatever N is."""
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), 65536):
        block = x[start:start + 65536].astype(np.float64) - mean
        cov += block.T @ block
    values, vectors = np.linalg.eigh(cov / max(len(x) - 1, 1))
    values, vectors = values[::-1].clip(min=0), vectors[:, ::-1]
    share = np.cumsum(values) / values.sum()
    p = int(np.searchsorted(share, explained_variance - 1e-12) + 1)
    # eigh's sign of each axis is arbitrary: fix it so the basis is reproducible.
    vectors = vectors[:, :p] * np.sign(vectors[np.abs(vectors[:, :p]).argmax(axis=0), np.arange(p)])
    return mean.astype(np.float32), vectors.T.astype(np.float32), float(share[p - 1])


def fit(pool_embeddings: np.ndarray, *, explained_variance: float, k: int, niter: int, nredo: int, seed: int,
        max_points_per_centroid: int) -> Buckets:
    """PCA + k-means on the synthetic pool (never on private data)."""
    import faiss

    x = l2_normalise(pool_embeddings)
    if len(x) < k:
        raise ValueError(f"k-means needs at least K={k} points, the pool has {len(x)}")
    mean, components, reached = fit_pca(x, explained_variance)
    points = np.ascontiguousarray(((x - mean) @ components.T).astype(np.float32))
    # faiss-gpu (the `gpu` install extra) on a CUDA machine trains on the GPUs; faiss-cpu reports none.
    gpus = getattr(faiss, "get_num_gpus", lambda: 0)()
    kmeans = faiss.Kmeans(points.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                          max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1, gpu=gpus > 0)
    kmeans.train(points)
    info = {"explained_variance_target": explained_variance, "explained_variance": reached,
            "pca_components": int(components.shape[0]), "k": k, "niter": niter, "nredo": nredo, "seed": seed,
            "max_points_per_centroid": max_points_per_centroid, "points": len(x),
            "kmeans_trained_on": min(len(x), max_points_per_centroid * k), "objective": float(kmeans.obj[-1]),
            "kmeans_device": "gpu" if gpus > 0 else "cpu"}
    return Buckets(mean, components, kmeans.centroids.copy(), info)


SCHEMA = pa.schema([("kind", pa.string()), ("index", pa.int32()), ("vector", pa.list_(pa.float32()))])


def to_table(b: Buckets) -> pa.Table:
    rows = [("mean", 0, b.mean)] + [("component", i, v) for i, v in enumerate(b.components)]
    rows += [("centroid", i, v) for i, v in enumerate(b.centroids)]
    return pa.table({"kind": [r[0] for r in rows], "index": [r[1] for r in rows],
                     "vector": [r[2].tolist() for r in rows]}, schema=SCHEMA)


def from_table(table: pa.Table, info: dict | str) -> Buckets:
    df = table.to_pandas()

    def stack(kind):
        part = df[df.kind == kind].sort_values("index")
        return np.stack([np.asarray(v, dtype=np.float32) for v in part.vector])

    return Buckets(stack("mean")[0], stack("component"), stack("centroid"),
                   json.loads(info) if isinstance(info, str) else info)
