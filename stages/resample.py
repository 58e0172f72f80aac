"""Stage `resample` (Algorithm 2, the release): draw the pool toward the noisy private histogram.

Inputs are all class dp: the pool, its cluster assignments and the noisy histogram; so is the
output, data/release/instructions.parquet. Target size: ``resample.target_size``, or when null
the noisy histogram's total (a DP estimate of the number of private train instructions; using
the exact number, as the paper does, would release a non-DP statistic), capped at
``max_pool_share`` of the pool: when the target is near the pool's size every cluster is short
and the release is the whole pool, unshaped by the histogram (paper: 300k of a 1M pool). Cluster k receives
floor(target x noisy_k / sum(noisy)) instructions drawn uniformly without replacement from its
pool members, or all of them when it has fewer (the shortfall is reported).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from dpinstruct.embeddings.resampling import draw, members, quotas
from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.errors import InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.algorithm2 import Resample

log = logging.getLogger("stages.resample")
STAGE = "resample"
POOL = Path("data/generated/pool.parquet")
ASSIGNMENTS = Path("data/clusters/pool_assignments.parquet")
NOISY = Path("data/histogram/noisy_histogram.parquet")
RELEASE = Path("data/release/instructions.parquet")
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("instruction", pa.string(), nullable=False),
                    pa.field("cluster", pa.int32(), nullable=False)])
METRICS = "metrics/resample.json"


def resample(params: dict, out) -> dict:
    cfg = Resample.from_params(params)
    pool = pd.read_parquet(POOL, columns=["id", "instruction"])
    assigned = pd.read_parquet(ASSIGNMENTS)
    if not pool.id.equals(assigned.id):
        raise InputError(ASSIGNMENTS, "ids do not match the pool row for row: re-run `dvc repro cluster`", field="id")
    noisy = pd.read_parquet(NOISY).sort_values("cluster").noisy_count.to_numpy()
    target = int(round(noisy.sum())) if cfg.target_size is None else cfg.target_size
    requested, target = target, min(target, int(cfg.max_pool_share * len(pool)))
    want = quotas(noisy, target)
    labels = assigned.cluster.to_numpy()
    rows, got = draw(members(labels), want, np.random.default_rng(cfg.seed))
    release = pool.iloc[rows].assign(cluster=labels[rows].astype(np.int32)).reset_index(drop=True)
    report = quality.check(release, "resample/instructions", quality.table_rules(
        columns=SCHEMA.names, non_null=SCHEMA.names, unique=("instruction",)))
    out.write_parquet(pa.Table.from_pandas(release, preserve_index=False), RELEASE, SCHEMA,
                      table_metadata(STAGE, P.params_hash(cfg.raw), "dp"))
    out.write_json(report, quality.report_path("resample/instructions"))
    short = want > got
    metrics = {"target_size": target, "target_from": "noisy_total" if cfg.target_size is None else "params",
               "target_requested": requested, "capped_by_max_pool_share": target < requested,
               "allocated": int(want.sum()), "released": len(release), "shortfall": int((want - got).sum()),
               "short_clusters": int(short.sum()), "clusters": len(want), "pool_size": len(pool)}
    out.write_json(metrics, METRICS)
    log.info("released %d instructions (target %d, shortfall %d in %d of %d clusters)", len(release), target,
             metrics["shortfall"], metrics["short_clusters"], len(want))
    return metrics


def main() -> None:
    with run_stage(STAGE) as out:
        resample(P.load(), out)


if __name__ == "__main__":
    main()
