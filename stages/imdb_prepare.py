"""Stage `imdb_prepare`: the PRIVATE IMDb reviews, cleaned and cut into the disjoint DP-SFT and
DP-PPO parts.

``rl.data.private_path`` (the aclImdb train split) -> data/rl/sft.parquet (the SFT part: id, text,
the first ``sft_tokens`` generator tokens of each review) and data/rl/prompts.parquet (every
review's opening, the first ``prompt_tokens`` tokens as text and token ids, with its part; DP-PPO
reads those of its own part), class private, rows sorted by id.

Every step is 1-stable (``dpinstruct.rl.data.private_parts``), so "add or remove one review of the
raw file" is the neighbouring relation the ledger's epsilon covers: the checks and the cleaning
read one row; a text that appears more than once is ONE review (set semantics on the cleaned
text, represented by the smallest id of its copies, whatever the file order); reviews shorter than
``min_tokens`` tokens are dropped; a review goes to a part by a seeded hash of its cleaned text
alone (``review_part``), so copies can never land in both parts and the two DP stages compose in
parallel. Only counts are logged (metrics/rl/prepare.json, private).
"""
from __future__ import annotations

import logging

import pyarrow as pa

from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.errors import InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.models import Models
from dpinstruct.io.settings.rl import RlData
from dpinstruct.models.loading import GENERATOR_DIR, load_tokenizer
from dpinstruct.rl.data import PROMPT_SCHEMA, private_parts, read_reviews

log = logging.getLogger("stages.imdb_prepare")
STAGE = "imdb_prepare"
SFT, PROMPTS = "data/rl/sft.parquet", "data/rl/prompts.parquet"
METRICS = "metrics/rl/prepare.json"
SFT_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False),
                        pa.field("n_tokens", pa.int32(), nullable=False)])
PROMPTS_SCHEMA = PROMPT_SCHEMA.append(pa.field("partition", pa.string(), nullable=False))


def imdb_prepare(params: dict, out) -> dict:
    cfg = RlData.from_params(params)  # wrong types stop here, before the private file is opened
    path = cfg.private_path
    tokenizer = load_tokenizer(GENERATOR_DIR)
    sft_rows, prompt_rows, metrics = private_parts(
        read_reviews(path), lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"], tokenizer.decode,
        min_tokens=cfg.min_tokens, prompt_tokens=cfg.prompt_tokens, sft_tokens=cfg.sft_tokens,
        seed=cfg.partition_seed, shares=cfg.partitions.shares())
    if not prompt_rows:
        raise InputError(path, "no review left after the length filter")
    phash = P.params_hash(cfg.raw, Models.read(params, "generator"))
    for rows, schema, target, name in ((sft_rows, SFT_SCHEMA, SFT, "sft"),
                                       (prompt_rows, PROMPTS_SCHEMA, PROMPTS, "prompts")):
        table = pa.table(list(zip(*rows)), schema=schema) if rows else schema.empty_table()
        report = quality.check(table.to_pandas(), f"rl/{name}", quality.table_rules(columns=schema.names,
                                                                                    non_null=schema.names))
        out.write_parquet(table, target, schema, table_metadata(STAGE, phash, "private", source=str(path)))
        out.write_json(report, quality.report_path(f"rl/{name}"))
    out.write_json(metrics, METRICS)
    log.info("private IMDb reviews: %s", metrics)
    return metrics


def main() -> None:
    with run_stage(STAGE) as out:
        imdb_prepare(P.load(), out)


if __name__ == "__main__":
    main()
