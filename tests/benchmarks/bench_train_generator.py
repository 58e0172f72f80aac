"""Benchmark of the train_generator stage's DP training (issue: Algorithm 1).

Run from the repository root after `dvc repro prepare` (needs data/prepared and data/models):
    .venv/bin/python -m tests.benchmarks.bench_train_generator [--fraction 1.0]
It runs each variant in its own process (so peak memory is per variant) and prints one JSON:
  (a) step_ratio: one DP step / one non-private step on the same micro-batches;
  (b) epoch_ratio: `fraction` of a DP epoch with this stage's recipe (length-sorted micro-batches
      under a token budget, padding to each micro-batch's longest row) / the naive recipe (every
      row padded to 64 tokens, fp32, plain opacus make_private + BatchMemoryManager);
  (c) peak RSS of each variant.
Levers (issue 16), each measured on (a) with `--variant step`: `--loss plain` (logits at every
position, the loss before the fused one), `--layers 20` (LoRA on blocks 20.. only, the backward
pass stops there), `--bf16` (autocast), `--compile mlp|blocks` (torch.compile each block's frozen
MLP, or each whole block with its LoRA layers and opacus hooks inside). `--threads N` sets torch's
intra-op threads.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import torch
import yaml

from dpinstruct.privacy.randomness import DPRandom

TRAIN = "data/prepared/train.parquet"
MAX_LEN, PHYSICAL = 64, 16


LEVERS = {"loss": "fused", "layers": None, "bf16": False, "compile": None}


def setup():
    from dpinstruct.io.settings.models import Lora
    from dpinstruct.models.loading import GENERATOR_DIR
    from dpinstruct.models.lora import lora_model
    from dpinstruct.training.dp_adam import build_examples

    cfg = yaml.safe_load(open("params.yaml"))["train_generator"]
    torch.manual_seed(0)
    lora = dict(cfg["lora"], **({"layers": list(range(LEVERS["layers"], 30))} if LEVERS["layers"] else {}))
    model, tok = lora_model(GENERATOR_DIR, Lora(**lora))
    if LEVERS["compile"]:
        # 30 blocks share one forward: without room in dynamo's cache, all but 8 would run eagerly.
        torch._dynamo.config.cache_size_limit = torch._dynamo.config.accumulated_cache_size_limit = 512
        for block in model.base_model.model.model.layers:
            (block.mlp if LEVERS["compile"] == "mlp" else block).compile()
    texts = pd.read_parquet(TRAIN).instruction.tolist()
    examples, prompt_len, _ = build_examples(tok, texts, cfg["prompt"], MAX_LEN)
    return cfg, model, tok, examples, prompt_len


def expected_batch(cfg: dict) -> int:
    """The stage's expected batch q x N~ (its divisor; N~ the pipeline's DP count, dp_count@instructions)."""
    from dpinstruct.privacy import accounting as acct
    from dpinstruct.privacy import dp_count

    return max(1, round(acct.divisor(cfg["sampling_rate"], dp_count.read("instructions")[0])))


def loss_for(model):
    """The stage's loss (fused, from the first adapted block), or the plain one it replaced."""
    from dpinstruct.models.instruction_loss import instruction_loss
    from dpinstruct.models.trunk import first_adapted_layer
    from dpinstruct.training import dp_adam as D

    return D.per_example_loss if LEVERS["loss"] == "plain" else instruction_loss(first_adapted_layer(model))


def ours(fraction: float) -> dict:
    from dpinstruct.training import dp_adam as D

    cfg, model, tok, examples, prompt_len = setup()
    lengths, q = np.array([len(e) for e in examples]), cfg["sampling_rate"]
    loss_fn = loss_for(model)
    dp = D.DPAdam(model, lr=1e-3, noise_multiplier=0.6, clip_norm=0.5, expected_batch_size=expected_batch(cfg),
                  noise=DPRandom(None), autocast_bf16=LEVERS["bf16"])
    rng, steps = DPRandom(None), max(1, round(fraction / q))
    start = time.perf_counter()
    for _ in range(steps):
        idx = D.poisson_sample(rng, len(examples), q)
        dp.step([D.collate([examples[i] for i in b], prompt_len, tok.pad_token_id)
                 for b in D.micro_batches(idx, lengths, cfg["micro_batch_tokens"])], loss_fn=loss_fn)
    return {"variant": "ours", "steps": steps, "seconds": time.perf_counter() - start}


def naive(fraction: float) -> dict:
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    from dpinstruct.training import dp_adam as D

    cfg, model, tok, examples, prompt_len = setup()
    padded = D.collate(examples, prompt_len, tok.pad_token_id)  # to the longest row...
    width = MAX_LEN - padded["input_ids"].shape[1]  # ...then to 64 for every row
    fill = {"input_ids": tok.pad_token_id, "attention_mask": 0, "labels": D.IGNORE}
    tensors = [torch.nn.functional.pad(padded[k], (0, width), value=fill[k]) for k in ("input_ids", "attention_mask", "labels")]
    batch = expected_batch(cfg)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=batch)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    module, optimizer, loader = PrivacyEngine().make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                             noise_multiplier=0.6, max_grad_norm=0.5, poisson_sampling=True)
    steps, done = max(1, round(fraction * len(examples) / batch)), 0
    start = time.perf_counter()
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=PHYSICAL, optimizer=optimizer) as batches:
        for ids, mask, labels in batches:
            if len(ids):
                D.per_example_loss(module, {"input_ids": ids, "attention_mask": mask, "labels": labels}).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            done += not optimizer._is_last_step_skipped
            if done == steps:
                break
    return {"variant": "naive", "steps": steps, "seconds": time.perf_counter() - start}


def step_pair(_: float) -> dict:
    """One DP step and one non-private step (plain Adam, same micro-batches), 3 repeats each."""
    from dpinstruct.training import dp_adam as D

    cfg, model, tok, examples, prompt_len = setup()
    lengths, rng = np.array([len(e) for e in examples]), np.random.default_rng(0)
    idx = rng.choice(len(examples), expected_batch(cfg), replace=False)
    micro = [D.collate([examples[i] for i in b], prompt_len, tok.pad_token_id)
             for b in D.micro_batches(idx, lengths, cfg["micro_batch_tokens"])]
    plain_opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    plain = []
    for _ in range(3):
        start = time.perf_counter()
        for b in micro:
            D.per_example_loss(model, b).sum().backward()
        plain_opt.step()
        plain_opt.zero_grad()
        plain.append(time.perf_counter() - start)
    dp = D.DPAdam(model, lr=1e-3, noise_multiplier=0.6, clip_norm=0.5, expected_batch_size=len(idx), noise=DPRandom(None),
                  autocast_bf16=LEVERS["bf16"])
    loss_fn, private = loss_for(model), []
    for _ in range(3):
        start = time.perf_counter()
        dp.step(micro, loss_fn=loss_fn)
        private.append(time.perf_counter() - start)
    return {"variant": "step", "batch": len(idx), "dp_step_s": min(private), "plain_step_s": min(plain), **LEVERS,
            "threads": torch.get_num_threads()}


VARIANTS = {"ours": ours, "naive": naive, "step": step_pair}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of an epoch for (b)")
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--loss", choices=("fused", "plain"), default="fused")
    parser.add_argument("--layers", type=int, default=None, help="LoRA on blocks LAYERS..29 only")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", choices=("mlp", "blocks"), default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    LEVERS.update(loss=args.loss, layers=args.layers, bf16=args.bf16, compile=args.compile)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        result = VARIANTS[args.variant](args.fraction)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    results = {}
    for v in ("step", "ours", "naive"):
        levers = [*(["--loss", args.loss]), *(["--layers", str(args.layers)] if args.layers else []),
                  *(["--bf16"] if args.bf16 else []), *(["--compile", args.compile] if args.compile else []),
                  *(["--threads", str(args.threads)] if args.threads else [])]
        out = subprocess.run([sys.executable, "-m", "tests.benchmarks.bench_train_generator", "--variant", v,
                              "--fraction", str(args.fraction), *levers], check=True, capture_output=True,
                             text=True).stdout
        results[v] = json.loads(out.strip().splitlines()[-1])
        print(v, results[v], file=sys.stderr, flush=True)
    results["step_ratio"] = results["step"]["dp_step_s"] / results["step"]["plain_step_s"]
    results["epoch_ratio"] = results["ours"]["seconds"] / results["naive"]["seconds"]
    results["fraction_of_epoch"] = args.fraction
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
