"""Stage `preference_features`: the frozen embedder's features of both answers of every comparison.

data/rlhf/pairs.parquet -> data/rlhf/features.parquet (id, partition, chosen, rejected: the
unit-length embeddings of "Human: prompt / Assistant: answer", ``dpinstruct/rl/preference_reward``),
class private. Computed once here and read by every reward model (DP, non-private reference, gold):
the embedder is frozen, so a comparison's features depend on that comparison alone, and training a
head on them under DP protects the comparison exactly as training on the texts would.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from dpinstruct.io import params as P
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.models import Models
from dpinstruct.io.settings.rlhf import Features
from dpinstruct.rl.preference_reward import Backbone

log = logging.getLogger("stages.preference_features")
STAGE = "preference_features"
PAIRS, OUT = "data/rlhf/pairs.parquet", "data/rlhf/features.parquet"
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("partition", pa.string(), nullable=False),
                    pa.field("chosen", pa.list_(pa.float32()), nullable=False),
                    pa.field("rejected", pa.list_(pa.float32()), nullable=False)])


def preference_features(params: dict, out) -> int:
    pairs = pd.read_parquet(PAIRS)
    model = Backbone.from_params(params)
    log.info("embedding both answers of %d comparisons", len(pairs))
    chosen = model.features(pairs.prompt.tolist(), pairs.chosen.tolist(), show_progress=True)
    rejected = model.features(pairs.prompt.tolist(), pairs.rejected.tolist(), show_progress=True)
    table = pa.table({"id": pairs.id, "partition": pairs.partition,
                      "chosen": list(chosen.astype(np.float32)), "rejected": list(rejected.astype(np.float32))},
                     schema=SCHEMA)
    phash = P.params_hash(Features.from_params(params).raw, Models.read(params, "embedder"))
    out.write_parquet(table, OUT, SCHEMA, table_metadata(STAGE, phash, "private"))
    return len(pairs)


def main() -> None:
    with run_stage(STAGE) as out:
        preference_features(P.load(), out)


if __name__ == "__main__":
    main()
