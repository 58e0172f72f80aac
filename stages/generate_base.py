"""Stage `generate_base`: the no-fine-tuning baseline pool, from the generator without adapter.

The same prompt, sampler, parsing and deduplication as ``generate`` (``generate`` params, with
``generate_base.n`` samples), from the base weights alone, so ``evaluate`` can show what DP
fine-tuning buys: the base pool's yield (kept / sampled) and its MAUVE against test beside the DP
pool's. It reads no private data and does not depend on epsilon, so a sweep computes it once
(class public).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import file_digest, table_metadata
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.generation import Generate, GenerateBase, TrainGenerator
from dpinstruct.models import pool_sampling, sampler
from dpinstruct.models.loading import GENERATOR_DIR, load_generator, load_tokenizer
from dpinstruct.models.pool_sampling import SCHEMA

log = logging.getLogger("stages.generate_base")
STAGE = "generate_base"
POOL = Path("data/generated/base_pool.parquet")
CHUNK_DIR = Path("data/checkpoints/generate_base")
METRICS = "metrics/generate_base.json"


def generate_base(params: dict, out) -> dict:
    # generate's sampler and rules with generate_base's n
    cfg = Generate.from_params(params).model_copy(update={"n": GenerateBase.from_params(params).n})
    prompt = TrainGenerator.read(params, "prompt")
    tokenizer = load_tokenizer(GENERATOR_DIR)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    phash = P.params_hash(cfg.raw, prompt)
    run_key = P.params_hash(phash, file_digest(GENERATOR_DIR / "model.safetensors"), file_digest(__file__),
                            file_digest(pool_sampling.__file__), file_digest(sampler.__file__))
    chunks = pool_sampling.sample_chunks(cfg, run_key, prompt_ids, CHUNK_DIR,
                                         lambda: load_generator(GENERATOR_DIR)[0].eval(), tokenizer.eos_token_id)
    df, counts = pool_sampling.parse_pool(chunks, cfg, prompt_ids, tokenizer, id_prefix="b")
    report = quality.check(df, "generate_base/pool", quality.table_rules(
        columns=SCHEMA.names, non_null=SCHEMA.names, unique=("instruction",),
        between={"n_tokens": (cfg.min_tokens, cfg.max_new_tokens)}))
    out.write_parquet(pa.Table.from_pandas(df, preserve_index=False), POOL, SCHEMA,
                      table_metadata(STAGE, phash, "public", source=str(GENERATOR_DIR)))
    out.write_json(report, quality.report_path("generate_base/pool"))
    out.write_json(counts, METRICS)
    log.info("base pool: %s", counts)
    return counts


def main() -> None:
    with run_stage(STAGE) as out:
        generate_base(P.load(), out)


if __name__ == "__main__":
    main()
