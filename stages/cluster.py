"""Stage `cluster` (Algorithm 2, fit): PCA + k-means on the SYNTHETIC pool's embeddings only.

Input: data/embeddings/pool.parquet (class dp). Output: data/clusters/buckets.parquet (PCA mean,
axes and centroids; class dp, settings in its metadata) and data/clusters/pool_assignments.parquet
(pool id -> cluster). No private data is read, so the buckets are post-processing of DP output
and can be shared by the histogram and the evaluation.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from dpinstruct.embeddings import bucketing, embedding_io
from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.errors import InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.algorithm2 import Cluster

log = logging.getLogger("stages.cluster")
STAGE = "cluster"
POOL_EMBEDDINGS = Path("data/embeddings/pool.parquet")
BUCKETS = Path("data/clusters/buckets.parquet")
ASSIGNMENTS = Path("data/clusters/pool_assignments.parquet")
ASSIGNMENT_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("cluster", pa.int32(), nullable=False)])
METRICS = "metrics/cluster.json"


def cluster(params: dict, out) -> dict:
    cfg = Cluster.from_params(params)
    ids, vectors = embedding_io.read(POOL_EMBEDDINGS)
    if len(ids) < cfg.k:
        raise InputError(POOL_EMBEDDINGS, f"{len(ids)} pool instructions cannot make cluster.k={cfg.k} clusters")
    log.info("fitting PCA (%.0f%% variance) and k-means (K=%d) on %d pool embeddings", 100 * cfg.explained_variance,
             cfg.k, len(ids))
    buckets = bucketing.fit(vectors, explained_variance=cfg.explained_variance, k=cfg.k, niter=cfg.niter,
                            nredo=cfg.nredo, seed=cfg.seed, max_points_per_centroid=cfg.max_points_per_centroid)
    labels = buckets.assign(vectors)
    sizes = np.bincount(labels, minlength=len(buckets.centroids))
    phash = P.params_hash(cfg.raw)
    stored = bucketing.to_table(buckets)
    bucket_report = quality.check(stored.drop_columns(["vector"]).to_pandas().assign(row=range(stored.num_rows)),
                                  "cluster/buckets", quality.table_rules(columns=["kind", "index"], id_column="row",
                                                                         non_null=["kind", "index"]))
    out.write_json(bucket_report, quality.report_path("cluster/buckets"))
    out.write_parquet(stored, BUCKETS, bucketing.SCHEMA,
                      table_metadata(STAGE, phash, "dp", buckets=json.dumps(buckets.info, sort_keys=True)))
    assignments = pa.table({"id": ids, "cluster": labels.astype(np.int32)}, schema=ASSIGNMENT_SCHEMA)
    report = quality.check(assignments.to_pandas(), "cluster/pool_assignments", quality.table_rules(
        columns=ASSIGNMENT_SCHEMA.names, non_null=ASSIGNMENT_SCHEMA.names, between={"cluster": (0, len(sizes) - 1)}))
    out.write_parquet(assignments, ASSIGNMENTS, ASSIGNMENT_SCHEMA, table_metadata(STAGE, phash, "dp"))
    out.write_json(report, quality.report_path("cluster/pool_assignments"))
    metrics = {**buckets.info, "pool_cluster_sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                                      "max": int(sizes.max()), "empty": int((sizes == 0).sum())}}
    out.write_json(metrics, METRICS)
    log.info("PCA %d components (%.3f variance); cluster sizes %s", buckets.info["pca_components"],
             buckets.info["explained_variance"], metrics["pool_cluster_sizes"])
    return metrics


def main() -> None:
    with run_stage(STAGE) as out:
        cluster(P.load(), out)


if __name__ == "__main__":
    main()
