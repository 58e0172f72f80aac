"""Stage `generate`: sample the synthetic instruction pool from the DP generator.

Reads only the base generator, the DP adapter and params, never private data, so the pool is
post-processing of a DP output (class dp, no privacy cost). The adapter is merged into the base
weights, then ``generate.n`` sequences are sampled from the training prompt with the paper's
nucleus sampling (top_p, temperature) in chunks of ``batch_size``, parsed, filtered and
deduplicated (dpinstruct/models/pool_sampling.py, shared with ``generate_base``). Finished chunks
are saved under data/checkpoints/generate: a killed run resumes at the first missing chunk.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import file_digest, table_metadata
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.generation import Generate, TrainGenerator
from dpinstruct.models import pool_sampling, sampler
from dpinstruct.models.loading import GENERATOR_DIR, load_tokenizer
from dpinstruct.models.lora import merged_model
from dpinstruct.models.pool_sampling import SCHEMA, chunk_seed  # noqa: F401  (the stage's API)

log = logging.getLogger("stages.generate")
STAGE = "generate"
ADAPTER_DIR = Path("data/adapters/generator")
POOL = Path("data/generated/pool.parquet")
CHUNK_DIR = Path("data/checkpoints/generate")
METRICS = "metrics/generate.json"


def generate(params: dict, out) -> dict:
    cfg, prompt = Generate.from_params(params), TrainGenerator.read(params, "prompt")
    tokenizer = load_tokenizer(GENERATOR_DIR)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    phash = P.params_hash(cfg.raw, prompt)
    # Saved chunks are reused only by the same params, weights and sampling code.
    run_key = P.params_hash(phash, file_digest(ADAPTER_DIR / "adapter_model.safetensors"),
                            file_digest(GENERATOR_DIR / "model.safetensors"), file_digest(__file__),
                            file_digest(pool_sampling.__file__), file_digest(sampler.__file__))
    chunks = pool_sampling.sample_chunks(cfg, run_key, prompt_ids, CHUNK_DIR,
                                         lambda: merged_model(GENERATOR_DIR, ADAPTER_DIR)[0], tokenizer.eos_token_id)
    df, counts = pool_sampling.parse_pool(chunks, cfg, prompt_ids, tokenizer)
    report = quality.check(df, "generate/pool", quality.table_rules(
        columns=SCHEMA.names, non_null=SCHEMA.names, unique=("instruction",),
        between={"n_tokens": (cfg.min_tokens, cfg.max_new_tokens)}))
    out.write_parquet(pa.Table.from_pandas(df, preserve_index=False), POOL, SCHEMA,
                      table_metadata(STAGE, phash, "dp", source=str(ADAPTER_DIR)))
    out.write_json(report, quality.report_path("generate/pool"))
    out.write_json(counts, METRICS)
    log.info("pool: %s", counts)
    return counts


def main() -> None:
    with run_stage(STAGE) as out:
        generate(P.load(), out)


if __name__ == "__main__":
    main()
