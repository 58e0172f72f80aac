"""Stage `imdb_public`: the PUBLIC IMDb reviews, cut into the reward classifier's part and the
evaluation prompts.

``rl.data.public_path`` (the aclImdb test split) -> data/rl/reward_reviews.parquet (id, label,
text) and data/rl/eval_prompts.parquet (id, prompt, prompt_ids: the first ``prompt_tokens``
generator tokens), class public. This stage never reads the private split, so its outputs are
public (the lineage audit checks it). The cut is a seeded hash of each id (``public_seed``).
"""
from __future__ import annotations

import logging

import pyarrow as pa

from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.models import Models
from dpinstruct.io.settings.rl import RlData
from dpinstruct.models.loading import GENERATOR_DIR, load_tokenizer
from dpinstruct.rl.data import PROMPT_SCHEMA, opening, read_reviews
from dpinstruct.text.splits import partition_of

log = logging.getLogger("stages.imdb_public")
STAGE = "imdb_public"
REWARD, EVAL = "data/rl/reward_reviews.parquet", "data/rl/eval_prompts.parquet"
REWARD_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("label", pa.int8(), nullable=False),
                           pa.field("text", pa.string(), nullable=False)])


def imdb_public(params: dict, out) -> dict:
    cfg = RlData.from_params(params)
    path, share = cfg.public_path, cfg.reward_share
    reviews = read_reviews(path)
    part = reviews.id.map(lambda i: partition_of(i, cfg.public_seed, {"reward": share, "eval": 1 - share}))
    reward = reviews[part == "reward"].reset_index(drop=True)
    tokenizer = load_tokenizer(GENERATOR_DIR)
    evaluation = reviews[part == "eval"].reset_index(drop=True)
    ids = tokenizer(evaluation.text.tolist(), add_special_tokens=False)["input_ids"]
    rows = [(r.id, tokenizer.decode(opening(t, cfg.prompt_tokens)), opening(t, cfg.prompt_tokens))
            for r, t in zip(evaluation.itertuples(), ids) if len(t) >= cfg.min_tokens]
    phash = P.params_hash(cfg.raw, Models.read(params, "generator"))
    for table, schema, target, name in ((pa.Table.from_pandas(reward, preserve_index=False), REWARD_SCHEMA, REWARD,
                                         "reward_reviews"),
                                        (pa.table(list(zip(*rows)), schema=PROMPT_SCHEMA), PROMPT_SCHEMA, EVAL, "eval_prompts")):
        report = quality.check(table.to_pandas(), f"rl/{name}", quality.table_rules(columns=schema.names,
                                                                                    non_null=schema.names))
        out.write_parquet(table, target, schema, table_metadata(STAGE, phash, "public", source=path))
        out.write_json(report, quality.report_path(f"rl/{name}"))
    metrics = {"reward_reviews": len(reward), "eval_prompts": len(rows)}
    log.info("public IMDb reviews: %s", metrics)
    return metrics


def main() -> None:
    with run_stage(STAGE) as out:
        imdb_public(P.load(), out)


if __name__ == "__main__":
    main()
