"""Benchmark of the generate stage's sampler against stock `model.generate` (issue: generation).

Run from the repository root after `dvc repro train_generator` (needs data/models and the adapter):
    .venv/bin/python -m tests.benchmarks.bench_generate [--n 256] [--rounds 2]
Both draw `n` sequences from the DP generator with the paper's sampling (top_p 0.95, temperature 1,
no top-k, max_new_tokens from params) in one process, alternating `rounds` times so that machine
noise hits both alike:
  stock:  transformers `generate` in fp32, batch 64, on the peft model as loaded (LoRA unmerged)
          and, separately, on the merged model;
  stage:  dpinstruct.models.sampler.sample with the stage's batch size on the merged model.
New tokens are counted up to and including each sequence's EOS (tokens `generate` spends on
rows that already ended are not counted). Prints one JSON with tokens/s and the ratios.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from dpinstruct.io import params as P
from dpinstruct.models import sampler
from dpinstruct.models.loading import GENERATOR_DIR, load_generator
from dpinstruct.models.lora import merged_model
from stages.generate import ADAPTER_DIR


def useful_tokens(rows: list[list[int]], eos: int) -> int:
    return sum(r.index(eos) + 1 if eos in r else len(r) for r in rows)


def stock(model, prompt, n, eos, cfg) -> tuple[int, float]:
    tokens, start = 0, time.perf_counter()
    for _ in range(0, n, 64):
        out = model.generate(torch.tensor([prompt] * 64), attention_mask=torch.ones(64, len(prompt), dtype=torch.long),
                             do_sample=True, top_p=cfg["top_p"], temperature=cfg["temperature"], top_k=0,
                             max_new_tokens=cfg["max_new_tokens"], eos_token_id=eos, pad_token_id=eos)
        tokens += useful_tokens(out[:, len(prompt):].tolist(), eos)
    return tokens, time.perf_counter() - start


def ours(model, prompt, n, eos, cfg) -> tuple[int, float]:
    tokens, start = 0, time.perf_counter()
    for c in range(0, n, cfg["batch_size"]):
        rows = sampler.sample(model, prompt, min(cfg["batch_size"], n - c), eos_id=eos,
                                max_new_tokens=cfg["max_new_tokens"], top_p=cfg["top_p"],
                                temperature=cfg["temperature"], generator=torch.Generator().manual_seed(c))
        tokens += sum(len(t) for t in rows)
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    params = P.load()
    cfg = params["generate"]
    torch.manual_seed(0)
    from peft import PeftModel

    base, tokenizer = load_generator(GENERATOR_DIR)
    unmerged = PeftModel.from_pretrained(base, str(ADAPTER_DIR)).eval()
    merged, _ = merged_model(GENERATOR_DIR, ADAPTER_DIR)
    prompt = tokenizer(params["train_generator"]["prompt"], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    totals = {k: [0, 0.0] for k in ("stock_unmerged", "stock_merged", "stage")}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, fn, model in (("stock_unmerged", stock, unmerged), ("stock_merged", stock, merged),
                                    ("stage", ours, merged)):
                t, s = fn(model, prompt, args.n, eos, cfg)
                totals[name][0] += t
                totals[name][1] += s
                print(name, t, f"{s:.1f}s", flush=True)
    rate = {k: t / s for k, (t, s) in totals.items()}
    print(json.dumps({"n_per_round": args.n, "rounds": args.rounds, "batch_size": cfg["batch_size"],
                      "max_new_tokens": cfg["max_new_tokens"], "tokens_per_s": rate,
                      "ratio_vs_stock_unmerged": rate["stage"] / rate["stock_unmerged"],
                      "ratio_vs_stock_merged": rate["stage"] / rate["stock_merged"]}, indent=2))


if __name__ == "__main__":
    main()
