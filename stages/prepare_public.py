"""Stage `prepare_public`: clean the PUBLIC out-of-domain instruction file (the paper's FLAN baseline).

``data.public_path`` -> data/prepared/public.parquet, class public, with the same cleaning rules as
the private set (``prepare.min_tokens`` ... in dpinstruct/text/cleaning.py) and an optional seeded cap
``prepare_public.size``. This stage never reads private data: that is why it is not part of
`prepare`, and the lineage check (dpinstruct/tools/lineage.py) verifies it on the DAG.
"""
from __future__ import annotations

import logging

import pyarrow as pa

from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.data import Cleaning, Data, PreparePublic
from dpinstruct.io.settings.models import Models
from dpinstruct.models.loading import GENERATOR_DIR, load_tokenizer
from dpinstruct.text.cleaning import SCHEMA, clean, rules

log = logging.getLogger("stages.prepare_public")
STAGE = "prepare_public"
OUT = "data/prepared/public.parquet"
METRICS = "metrics/prepare_public.json"


def prepare_public(params: dict, out) -> dict:
    path, cleaning = Data.read(params, "public_path"), Cleaning.from_params(params)
    cfg = PreparePublic.from_params(params)
    tokenizer = load_tokenizer(GENERATOR_DIR)
    public, counts = clean(path, tokenizer, cleaning, per_unit=False)
    if cfg.size:  # a seeded sample: the public set only serves as a baseline and for evaluation
        public = public.sample(n=min(cfg.size, len(public)), random_state=cfg.seed).sort_index()
    report = quality.check(public, f"{STAGE}/public", rules(public, cleaning))
    meta = table_metadata(STAGE, P.params_hash(path, cleaning.raw, cfg.raw, Models.read(params, "generator")),
                          "public", split="public", source=str(path))
    out.write_parquet(pa.Table.from_pandas(public, preserve_index=False), OUT, SCHEMA, meta)
    out.write_json(report, quality.report_path(f"{STAGE}/public"))
    metrics = {**counts, "written": len(public)}
    out.write_json(metrics, METRICS)
    log.info("public: %s", metrics)
    return metrics


def main() -> None:
    with run_stage(STAGE) as out:
        prepare_public(P.load(), out)


if __name__ == "__main__":
    main()
