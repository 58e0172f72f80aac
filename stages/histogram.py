"""Stage `histogram` (Algorithm 2, the DP step): noisy counts of private instructions per cluster.

Mechanism (add-or-remove-one record neighbouring, a record = one private train instruction):
every private instruction votes once, for its nearest centroid in the PCA space fitted on the
synthetic pool, so adding or removing one record changes exactly one count by 1 (L2 sensitivity
1). Independent Gaussian noise N(0, sigma^2) is added to every one of the K counts (empty
clusters included) and negatives are clipped to 0 (post-processing). Only this noisy histogram
leaves the stage (class dp); the exact counts exist only in memory. The noise comes from a
secret-keyed stream bound to this run's whole run key (params, inputs, code; replayable by the key's
holder only; dpinstruct/privacy/run_key.py) or,
with privacy.secure_mode, from the OS's CSPRNG (dpinstruct/privacy/randomness.py); never from a seed.
A non-private run (privacy.epsilon: .inf) releases the exact counts and its ledger says so.
With ``user_level.enabled`` (params; never inferred from the data) the unit is the user: each user's records share ONE vote
(1/n each, L2 sensitivity still 1; dpinstruct/privacy/user_level.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from dpinstruct.embeddings import bucketing, embedding_io
from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import read_metadata, read_table, table_metadata
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.privacy import Histogram, Privacy, UserLevel
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, ledger, user_level
from dpinstruct.privacy.histogram import exact_counts, release
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.privacy.run_key import run_key

log = logging.getLogger("stages.histogram")
DATASET = "instructions"  # the private dataset this mechanism touches (ledger, composition)
STAGE = "histogram"
TRAIN_EMBEDDINGS = Path("data/embeddings/train.parquet")
TRAIN = Path("data/prepared/train.parquet")  # only its id and user_id columns
BUCKETS = Path("data/clusters/buckets.parquet")
NOISY = Path("data/histogram/noisy_histogram.parquet")
SCHEMA = pa.schema([pa.field("cluster", pa.int32(), nullable=False), pa.field("noisy_count", pa.float64(), nullable=False)])
METRICS = "metrics/histogram.json"
COUNT = "instructions"  # the DP count of the same records (dp_count@instructions): the delta < 1/N~ refusal
# Every file the stage reads: bound into its DP stream (a test checks dvc.yaml's deps agree).
INPUTS = (TRAIN_EMBEDDINGS, TRAIN, BUCKETS, dp_count.entry_path(COUNT))


def histogram(params: dict, out) -> dict:
    cfg, privacy, user_cfg = Histogram.from_params(params), Privacy.from_params(params), UserLevel.from_params(params)
    ids, private = embedding_io.read(TRAIN_EMBEDDINGS)
    users = pd.read_parquet(TRAIN, columns=["id", "user_id"]).set_index("id").user_id.reindex(ids)
    units = user_level.units(users, ids, user_cfg.enabled)  # the mode is a param, never the data's
    # Refuses unsafe settings before any counting; the same rule (on the DP count) the generator's plan used.
    sigma = acct.histogram_noise(privacy, cfg, dp_count.read(COUNT)[0])
    buckets = bucketing.from_table(read_table(BUCKETS), read_metadata(BUCKETS)["buckets"])
    sections = (cfg.raw, privacy.raw, user_cfg.raw)  # as written: what the artifacts and the stream are bound to
    phash = P.params_hash(*sections)
    random = DPRandom.for_purpose(f"{STAGE}/noise", *run_key(STAGE, sections, INPUTS), privacy=privacy)
    secure = not random.replayable
    labels, k = buckets.assign(private), len(buckets.centroids)
    exact = exact_counts(labels, k) if units is None else user_level.user_votes(labels, units, k)
    noisy = release(exact, sigma, random)
    table = pa.table({"cluster": np.arange(len(noisy), dtype=np.int32), "noisy_count": noisy}, schema=SCHEMA)
    report = quality.check(table.to_pandas(), "histogram/noisy_histogram", quality.table_rules(
        columns=SCHEMA.names, id_column="cluster", non_null=SCHEMA.names, between={"noisy_count": (0, None)}))
    out.write_parquet(table, NOISY, SCHEMA, table_metadata(STAGE, phash, "dp", mechanism="gaussian", sigma=sigma))
    out.write_json(report, quality.report_path("histogram/noisy_histogram"))
    entry = ledger.make_entry(stage=STAGE, mechanism="gaussian", dataset=DATASET, partition="all",
                              sensitivity=1.0, delta=privacy.delta,
                              event=acct.histogram_event(sigma), secure_mode=secure, params_hash=phash,
                              neighbouring=user_level.neighbouring(user_cfg.enabled, acct.NEIGHBOURING))
    out.write_json(entry, ledger.entry_path(STAGE))
    # Only DP quantities: the noisy total, never the exact number of private records.
    metrics = {"clusters": len(noisy), "sigma": sigma, "noisy_total": float(noisy.sum()),
               "clipped_to_zero": int((noisy == 0).sum()), "secure_mode": secure}
    out.write_json(metrics, METRICS)
    log.info("noisy histogram over %d clusters, sigma %g: epsilon of this step alone %s", len(noisy), sigma,
             entry["epsilon"])
    return entry


def main() -> None:
    with run_stage(STAGE) as out:
        histogram(P.load(), out)


if __name__ == "__main__":
    main()
