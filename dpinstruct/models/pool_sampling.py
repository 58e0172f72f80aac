"""Sampling an instruction pool from a generator: chunked, resumable, parsed and deduplicated.

Shared by the stages ``generate`` (the DP generator) and ``generate_base`` (the same generator
without its adapter, the no-fine-tuning baseline), so that both pools come from the same sampler,
prompt and parsing rules and differ only in the weights. Chunk c uses its own seed derived from
(seed, c), so a pool is deterministic, and each finished chunk is saved under ``chunk_dir``: a
killed run resumes at the first missing chunk.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm import tqdm

from dpinstruct.io.chunk_store import ChunkStore
from dpinstruct.io.settings.generation import Generate
from dpinstruct.models import sampler
from dpinstruct.models.loading import device
from dpinstruct.text.filters import dedup
from dpinstruct.text.generation_parsing import REASONS, parse

log = logging.getLogger(__name__)
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("instruction", pa.string(), nullable=False),
                    pa.field("n_tokens", pa.int32(), nullable=False), pa.field("seed", pa.int64(), nullable=False),
                    pa.field("chunk", pa.int32(), nullable=False)])
CHUNK_SCHEMA = pa.schema([("tokens", pa.list_(pa.int32()))])


def chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_chunks(cfg: Generate, run_key: str, prompt_ids: list[int], chunk_dir: Path | str, load_model,
                  eos_id: int) -> list[list[list[int]]]:
    """Token ids of every sample, chunk by chunk, reusing chunks a previous run of the same key
    saved; ``load_model()`` gives the model, called only when a chunk is missing."""
    size, n = cfg.batch_size, cfg.n
    sizes = [min(size, n - c * size) for c in range(math.ceil(n / size))]
    store = ChunkStore(chunk_dir, run_key)
    done = store.done(len(sizes))
    if done:
        log.info("resuming: %d of %d chunks already sampled", len(done), len(sizes))
    model = load_model() if len(done) < len(sizes) else None
    # One tick per decoding step (max_new_tokens per chunk), so the ETA moves within a chunk;
    # a chunk whose rows all end early jumps ahead, making the ETA an upper bound.
    steps = cfg.max_new_tokens
    bar = tqdm(total=len(sizes) * steps, initial=len(done) * steps, desc=f"sampling {len(sizes)} chunks",
               unit="step")
    new_tokens, start = 0, time.perf_counter()

    def count(k: int) -> None:
        nonlocal new_tokens
        new_tokens += k
        bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - start):.0f}", refresh=False)
        bar.update(1)

    for c, rows in enumerate(sizes):
        if c in done:
            continue
        generator = torch.Generator(device=device()).manual_seed(chunk_seed(cfg.seed, c))
        ticks = bar.n
        tokens = sampler.sample(model, prompt_ids, rows, eos_id=eos_id, max_new_tokens=cfg.max_new_tokens,
                                top_p=cfg.top_p, temperature=cfg.temperature,
                                generator=generator, on_tokens=count)
        store.save(c, pa.table({"tokens": tokens}, schema=CHUNK_SCHEMA))
        bar.update(ticks + steps - bar.n)
    bar.close()
    if new_tokens:
        seconds = time.perf_counter() - start
        log.info("sampled %d new tokens in %.1f s: %.1f tokens/s", new_tokens, seconds, new_tokens / seconds)
    return [store.load(c).column("tokens").to_pylist() for c in range(len(sizes))]


def parse_pool(chunks: list[list[list[int]]], cfg: Generate, prompt_ids: list[int], tokenizer,
               id_prefix: str = "g") -> tuple[pd.DataFrame, dict]:
    """(rows that parse, without exact duplicates; counts of sampled, kept and each drop reason)."""
    special = set(tokenizer.all_special_ids)
    rows, counts = [], {"sampled": cfg.n, **{r: 0 for r in REASONS}}
    for c, samples in enumerate(chunks):
        seed = chunk_seed(cfg.seed, c)
        for r, tokens in enumerate(samples):
            parsed = parse(tokens, prompt_ids=prompt_ids, special_ids=special, tokenizer=tokenizer, rules=cfg)
            if parsed.drop:
                counts[parsed.drop] += 1
            else:
                rows.append((f"{id_prefix}{c:05d}-{r:04d}", parsed.text, parsed.n_tokens, seed, c))
    df = pd.DataFrame(rows, columns=SCHEMA.names)
    reasons = dedup(df.instruction.tolist(), casefold=cfg.dedup_casefold, ngram_n=0)
    counts["exact_duplicate"] = sum(r is not None for r in reasons)
    df = df[[r is None for r in reasons]].reset_index(drop=True)
    counts |= {"kept": len(df), "tokens_sampled": sum(len(t) for s in chunks for t in s)}
    return df, counts
