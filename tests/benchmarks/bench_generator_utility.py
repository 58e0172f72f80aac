"""What the DP generator learns under other training settings (issue 16: utility at the default).

Run from the repository root after `dvc repro prepare` (needs data/prepared and data/models):
    .venv/bin/python -m tests.benchmarks.bench_generator_utility '{"train_generator.lr": 0.006}' [--samples 384]
It trains the generator exactly as train_generator does (dp_generator.fit: same plan, Poisson
sampling, clipping and keyed noise, in a scratch folder) with the given params overrides, then
prints one JSON: the plan (sigma, T, composed epsilon), the training time, the pool yield of
``--samples`` samples (generate's sampler, parsing and dedup, seed 0) and the per-token NLL on the
private val split (val_nll's measure). Aggregates only: no instruction is printed.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import pandas as pd
import torch

from dpinstruct.io import params as P
from dpinstruct.io.settings.generation import Generate, TrainGenerator
from dpinstruct.models import sampler
from dpinstruct.models.instruction_loss import record_nll
from dpinstruct.privacy import dp_count
from dpinstruct.privacy.run_key import run_key
from dpinstruct.text.filters import dedup
from dpinstruct.text.generation_parsing import parse
from dpinstruct.training import dp_generator
from dpinstruct.training.dp_adam import build_examples
from stages import train_generator


def apply(params: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node[part]
        node[last] = value
    return params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("overrides", help='JSON of dotted params keys, e.g. {"train_generator.lr": 0.006}')
    parser.add_argument("--samples", type=int, default=384)
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    params = apply(P.load(), overrides)
    cfg, gen = TrainGenerator.from_params(params), Generate.from_params(params)
    texts = pd.read_parquet("data/prepared/train.parquet").instruction.tolist()
    scratch, start = tempfile.mkdtemp(), time.perf_counter()
    noisy_count, count_component, _ = dp_count.read("instructions")  # the pipeline's DP count, as train_generator
    # train_generator's whole run key (params with the overrides, split, weights, count, code) plus this
    # benchmark's tag: its noise is never a release's noise, nor another setting's
    key = (*run_key(dp_generator.STAGE, dp_generator.sections(params), train_generator.INPUTS),
           "bench:generator_utility")
    fitted = dp_generator.fit(params, texts, units=None, noisy_count=noisy_count, count_component=count_component,
                              run_key=key, checkpoint_dir=f"{scratch}/ck",
                              live_dir=f"{scratch}/live")
    train_s = time.perf_counter() - start
    model, tok = fitted.model.eval(), fitted.tokenizer
    val = pd.read_parquet("data/prepared/val.parquet").instruction.tolist()
    examples, prompt_len, _ = build_examples(tok, val, cfg.prompt, cfg.max_seq_len)
    nll, tokens = (x.sum() for x in record_nll(model, examples, prompt_len, tok.pad_token_id, "val NLL"))
    merged = model.merge_and_unload().eval()
    prompt_ids = tok(cfg.prompt, add_special_tokens=False)["input_ids"]
    samples = sampler.sample(merged, prompt_ids, args.samples, eos_id=tok.eos_token_id,
                             max_new_tokens=gen.max_new_tokens, top_p=gen.top_p, temperature=gen.temperature,
                             generator=torch.Generator().manual_seed(0))
    special = set(tok.all_special_ids)
    kept = [p.text for p in (parse(t, prompt_ids=prompt_ids, special_ids=special, tokenizer=tok, rules=gen)
                             for t in samples) if not p.drop]
    unique = sum(r is None for r in dedup(kept, casefold=True, ngram_n=0))
    print(json.dumps({"overrides": overrides, "sigma": fitted.plan.noise_multiplier, "steps": fitted.plan.steps,
                      "composed_epsilon": fitted.plan.composed_epsilon, "train_s": round(train_s),
                      "pool_yield": unique / args.samples, "val_nll": nll / tokens}))


if __name__ == "__main__":
    main()
