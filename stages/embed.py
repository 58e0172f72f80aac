"""Stage `embed` (one DVC stage per instruction set, `embed@<set>`): sentence embeddings.

``python -m stages.embed <set>`` embeds the ``instruction`` column of one table with the
materialised embedder (default all-MiniLM-L6-v2) and writes data/embeddings/<set>.parquet (id,
embedding). The output keeps the privacy class of its input: embeddings of private splits are
as private as the text (they are not DP), those of the synthetic pool are dp.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dpinstruct.embeddings import embedding_io
from dpinstruct.embeddings.encoder import encode
from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import read_metadata, table_metadata
from dpinstruct.io.errors import ConfigError, InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.algorithm2 import Embed
from dpinstruct.io.settings.models import Models
from dpinstruct.models.loading import EMBEDDER_DIR

log = logging.getLogger("stages.embed")
STAGE = "embed"
SETS = {"pool": "data/generated/pool.parquet", "base": "data/generated/base_pool.parquet",
        "train": "data/prepared/train.parquet",
        "val": "data/prepared/val.parquet", "test": "data/prepared/test.parquet",
        "public": "data/prepared/public.parquet"}


def output(name: str) -> Path:
    return Path(f"data/embeddings/{name}.parquet")


def embed(name: str, params: dict, out) -> int:
    if name not in SETS:
        raise ConfigError("stage argument", f"unknown instruction set {name!r}; one of {sorted(SETS)}")
    cfg, embedder = Embed.from_params(params), Models.read(params, "embedder")
    source = SETS[name]
    df = pd.read_parquet(source, columns=["id", "instruction"])
    if df.empty:
        raise InputError(source, "no rows to embed")
    privacy = read_metadata(source).get("privacy")
    if privacy is None:
        raise InputError(source, "no privacy class in the Parquet metadata (dpinstruct.privacy)")
    log.info("embedding %d rows of %s (class %s)", len(df), name, privacy)
    vectors = encode(df.instruction.tolist(), EMBEDDER_DIR, batch_size=cfg.batch_size,
                     max_seq_length=cfg.max_seq_length, bf16=cfg.bf16)
    if not np.isfinite(vectors).all():
        raise InputError(source, "embedder returned non-finite values", field="instruction")
    report = quality.check(df[["id"]], f"embed/{name}", quality.table_rules(columns=["id"], non_null=["id"]))
    table = embedding_io.to_table(df.id.tolist(), vectors)
    meta = table_metadata(STAGE, P.params_hash(cfg.raw), privacy, set=name, source=source,
                          embedder=embedder, dim=int(vectors.shape[1]))
    out.write_parquet(table, output(name), table.schema, meta)
    out.write_json(report, quality.report_path(f"embed/{name}"))
    return len(df)


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    with run_stage(f"{STAGE}@{name}") as out:
        embed(name, P.load(), out)


if __name__ == "__main__":
    main()
