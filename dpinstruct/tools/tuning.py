"""`dpinstruct tune`: choose DP hyperparameter defaults on PUBLIC proxies, by a procedure anyone can re-run.

A hyperparameter chosen by looking at private data is a release of that data outside the DP
guarantee (the ledger does not count it). This module derives ``rl.dp_ppo.clip_norm`` and
``train_generator.lr`` on public data only:

``dpinstruct tune ppo-clip``
    The per-prompt gradient norm of the DP-PPO loss at the first step, on the PUBLIC IMDb
    evaluation prompts (data/rl/eval_prompts.parquet, `imdb_public`), skipping the first
    ``rl.evaluate_rl.rows`` of them by id (the ones `evaluate_rl` scores) and taking a seeded
    sample. Everything else is the dp_ppo stage's own code: the policy is the base generator with
    the DP-SFT adapter merged (data/adapters/dp_sft, a dp output: reading it is post-processing) or,
    when that adapter does not exist, the base alone; a fresh LoRA as ``rl.dp_ppo.lora`` (seeded by
    ``rl.dp_ppo.seed``); ``rollouts`` continuations per prompt from plain torch generators with a
    public seed (``ppo.public_seed``: no secret is needed on public prompts); the public reward,
    the KL-shaped group advantages, the clipped surrogate, and the per-prompt gradient as DPAdam
    forms it (opacus per-row gradients averaged over a prompt's rollouts, ``group_by_unit``) before
    clipping. It prints the 10/50/90% quantiles; the suggested clip norm is the 90th percentile,
    which clips about one prompt in ten (little clipping bias) and keeps the noise, sigma x C, at
    the scale of the gradients themselves instead of C = 1's twenty-fold excess.

``dpinstruct tune generator-lr``
    The FLAN rows (data/prepared/public.parquet, `prepare_public`) split by a seeded hash of each
    id into train (85%) and held-out (15%); for each learning rate of the grid the generator is
    trained exactly as train_generator trains it (``dp_generator.fit``: the same plan at the
    default privacy.epsilon, Poisson sampling, clipping and keyed noise, in scratch folders) on the
    train part, with the exact public size as its count (``noisy_count = len(rows)``) and a count
    component ``(dp_count.sigma, 1, 1)`` so that the calibration equals the real run's; each run is
    scored by the held-out per-token NLL (val_nll's measure, as bench_generator_utility computes
    it) and, with ``--samples``, the pool yield. The best lr is the lowest held-out NLL.

Only tables whose lineage metadata says ``public`` are read (``read_public``: anything else is
refused), plus the public models and, for ppo-clip, the DP-SFT adapter. The DP randomness of the
generator-lr runs is a keyed stream like every DP run's: on public data a throw-away key is fine
(``DPINSTRUCT_KEY_FILE=~/.config/dpinstruct/tune.key``, mode 0600, absolute or ~ path).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from dpinstruct.io import params as P
from dpinstruct.io.artifacts import read_metadata
from dpinstruct.io.errors import ConfigError, InputError, PipelineError
from dpinstruct.io.runner import setup_logging
from dpinstruct.io.settings.generation import Generate, TrainGenerator
from dpinstruct.io.settings.privacy import DpCount
from dpinstruct.io.settings.rl import DpPpo, EvaluateRl
from dpinstruct.models.loading import GENERATOR_DIR
from dpinstruct.privacy.ledger import finite

log = logging.getLogger(__name__)
EVAL_PROMPTS = Path("data/rl/eval_prompts.parquet")   # imdb_public: public
PUBLIC_ROWS = Path("data/prepared/public.parquet")     # prepare_public: public
SFT_ADAPTER = Path("data/adapters/dp_sft")             # dp_sft: dp (post-processing to read)
REWARD_DIR = Path("data/models/sentiment_reward")      # sentiment_reward: public
QUANTILES = (0.1, 0.5, 0.9)
DEFAULT_LRS = (2e-3, 6e-3, 1.2e-2)
HELDOUT_SHARE = 0.15


# --- inputs -----------------------------------------------------------------------------------

def read_public(path: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet table whose lineage metadata (``dpinstruct.privacy``) says public; refused otherwise,
    before a single row is read."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found: run the public stages first (dvc repro models prepare_public imdb_public "
                               "sentiment_reward)")
    privacy = read_metadata(path).get("privacy")
    if privacy != "public":
        raise InputError(path, f"its privacy class is {privacy!r}, not 'public': tuning reads public data only "
                               "(a default chosen on private data is a release outside the DP guarantee)")
    return pd.read_parquet(path, columns=columns)


def override(params: dict, assignments: list[str] | None) -> dict:
    """A copy of ``params`` with ``key.path=value`` assignments (values parsed as YAML), as ``dvc exp -S``."""
    params = copy.deepcopy(params)
    for item in assignments or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(item, "expected key.path=value")
        *path, last = key.split(".")
        node = params
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ConfigError(key, "no such section in params.yaml")
            node = node[part]
        if last not in node:
            raise ConfigError(key, "no such key in params.yaml")
        node[last] = yaml.safe_load(raw)
    return params


def quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"q{round(100 * q)}": float(np.quantile(values, q)) for q in QUANTILES}


# --- ppo-clip -----------------------------------------------------------------------------------

def ppo_settings(cfg: DpPpo):
    """The dp_ppo stage's settings (``rl.dp_ppo``), by the one rule the stage uses."""
    from dpinstruct.rl import ppo

    return ppo.PPOSettings.from_params(cfg)


def tuning_prompts(params: dict, n: int, seed: int) -> pd.DataFrame:
    """``n`` public evaluation prompts: sorted by id, without the first ``rl.evaluate_rl.rows`` (the
    prompts evaluate_rl scores), then a seeded sample."""
    prompts = read_public(EVAL_PROMPTS, columns=["id", "prompt_ids"]).sort_values("id", kind="stable")
    skip = EvaluateRl.read(params, "rows")
    pool = prompts.iloc[skip:] if len(prompts) > skip + n else prompts
    if n < 1 or len(pool) < n:
        raise ConfigError("--prompts", f"need 1 <= prompts <= {len(pool)} public prompts, got {n}")
    return pool.sample(n=n, random_state=seed).sort_values("id", kind="stable").reset_index(drop=True)


def per_unit_grad_norms(gsm, params: list, micro: list[dict], loss_fn) -> np.ndarray:
    """The L2 norm of each privacy unit's gradient exactly as DPAdam forms it before clipping: opacus'
    per-row gradients of ``loss_fn`` (a GradSampleModule with mean reduction, the loss's mean
    back-propagated), averaged over each unit's rows (``group_by_unit``), the norm over all
    trainable parameters (opacus' ``per_sample_norms``)."""
    from dpinstruct.training.dp_adam import group_by_unit

    gsm.train()
    norms = []
    for batch in micro:
        losses = loss_fn(gsm, batch)
        losses.mean().backward()
        group_by_unit(params, batch["unit"])
        squared = sum(p.grad_sample.reshape(len(p.grad_sample), -1).norm(2, dim=1) ** 2 for p in params)
        norms.append(squared.sqrt().detach().cpu().numpy())
        for p in params:
            p.grad_sample, p.grad = None, None
    return np.concatenate(norms)


def ppo_clip(params: dict, *, prompts: int = 128, seed: int = 0) -> dict:
    """The per-prompt DP-PPO gradient norms at the first step on public prompts (module docstring)."""
    from opacus import GradSampleModule

    from dpinstruct.models.loading import load_generator
    from dpinstruct.models.lora import lora_model, merged_model
    from dpinstruct.models.trunk import first_adapted_layer
    from dpinstruct.rl import ppo
    from dpinstruct.rl.reward import SentimentReward

    cfg = DpPpo.from_params(params)
    s = ppo_settings(cfg)
    table = tuning_prompts(params, prompts, seed)
    if not (REWARD_DIR / "reward.json").exists():
        raise InputError(REWARD_DIR, "not found: dvc repro sentiment_reward (public)")
    started = time.perf_counter()
    with_sft = (SFT_ADAPTER / "adapter_config.json").exists()
    base = merged_model(GENERATOR_DIR, SFT_ADAPTER) if with_sft else load_generator(GENERATOR_DIR)
    torch.manual_seed(cfg.seed)  # LoRA init, as the stage
    policy, tokenizer = lora_model(base, cfg.lora)
    reward = SentimentReward.load(REWARD_DIR)
    prompt_ids = table.prompt_ids.map(list).tolist()
    prompt_len = len(prompt_ids[0])
    start = first_adapted_layer(policy)
    generators = ppo.rollout_seeds(ppo.public_seed(seed), table.id.tolist(), s.rollouts)
    ids, hidden = ppo.rollouts_and_trunk(policy, prompt_ids, s, generators, start)
    rewards = reward.logits(tokenizer.batch_decode(ids[:, prompt_len:], skip_special_tokens=True))
    old_logp, ref_logp = ppo.old_and_reference_logprobs(policy, hidden, ids, prompt_len, start)
    kl = ppo.kl_to_reference(old_logp, ref_logp).numpy()
    adv = ppo.advantages(rewards, kl, s.rollouts, s.kl_coef)
    micro = ppo.micro_batches(ids, hidden, old_logp, adv, s.rollouts, cfg.prompts_per_micro)
    gsm = GradSampleModule(policy, batch_first=True, loss_reduction="mean")  # as DPAdam wraps it
    trainable = [p for p in gsm.parameters() if p.requires_grad]
    norms = per_unit_grad_norms(gsm, trainable, micro, ppo.ppo_loss(s.clip_range, prompt_len, start))
    q = quantiles(norms)
    return {"prompts": len(norms), "policy": "base + DP-SFT adapter (merged)" if with_sft else "base generator alone "
            f"({SFT_ADAPTER} not found)", "source": f"{EVAL_PROMPTS} (public), without the first "
            f"{EvaluateRl.read(params, 'rows')} by id (evaluate_rl's), seeded sample {seed}",
            "rollouts": s.rollouts, "new_tokens": s.new_tokens, "mean_reward": float(np.mean(rewards)),
            "quantiles": q, "mean": float(norms.mean()), "suggested_clip_norm": float(f"{q['q90']:.2g}"),
            "median": q["q50"], "current_clip_norm": cfg.clip_norm,
            "seconds": round(time.perf_counter() - started, 1)}


# --- generator-lr -------------------------------------------------------------------------------

def split_public(rows: pd.DataFrame, seed: int,
                 heldout_share: float = HELDOUT_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out) by a seeded hash of each row's id (``splits.partition_of``)."""
    from dpinstruct.text.splits import partition_of

    if not 0 < heldout_share < 1:
        raise ConfigError("--heldout-share", f"must be in (0, 1), got {heldout_share}")
    part = rows.id.map(lambda i: partition_of(str(i), seed, {"train": 1 - heldout_share, "heldout": heldout_share}))
    return rows[part == "train"].reset_index(drop=True), rows[part == "heldout"].reset_index(drop=True)


def heldout_nll(model, tokenizer, texts: list[str], cfg: TrainGenerator) -> tuple[float, int]:
    """(per-token NLL, scored rows) of ``texts`` as training records (prompt + instruction + EOS, rows
    longer than max_seq_len skipped): the measure of val_nll and bench_generator_utility."""
    from dpinstruct.models.instruction_loss import record_nll
    from dpinstruct.training.dp_adam import build_examples

    examples, prompt_len, _ = build_examples(tokenizer, texts, cfg.prompt, cfg.max_seq_len)
    if not examples:
        raise InputError(PUBLIC_ROWS, f"no held-out row fits train_generator.max_seq_len={cfg.max_seq_len}")
    nll, tokens = record_nll(model.eval(), examples, prompt_len, tokenizer.pad_token_id, "held-out NLL")
    return float(nll.sum() / tokens.sum()), len(examples)


def pool_yield(model, tokenizer, params: dict, samples: int) -> float:
    """Share of ``samples`` samples that parse and survive dedup (generate's sampler and rules, seed 0)."""
    from dpinstruct.models import sampler
    from dpinstruct.text.filters import dedup
    from dpinstruct.text.generation_parsing import parse

    prompt, gen = TrainGenerator.read(params, "prompt"), Generate.from_params(params)
    merged = model.merge_and_unload().eval()
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    texts = sampler.sample(merged, prompt_ids, samples, eos_id=tokenizer.eos_token_id,
                           max_new_tokens=gen.max_new_tokens, top_p=gen.top_p, temperature=gen.temperature,
                           generator=torch.Generator().manual_seed(0))
    special = set(tokenizer.all_special_ids)
    kept = [p.text for p in (parse(t, prompt_ids=prompt_ids, special_ids=special, tokenizer=tokenizer, rules=gen)
                             for t in texts) if not p.drop]
    return sum(r is None for r in dedup(kept, casefold=True, ngram_n=0)) / samples


def generator_lr(params: dict, *, lrs=DEFAULT_LRS, seed: int = 0, heldout_share: float = HELDOUT_SHARE,
                 rows: int | None = None, samples: int = 0, workdir: Path | str | None = None) -> dict:
    """One DP training run per lr on the public FLAN rows, scored on their held-out part (module docstring)."""
    from dpinstruct.models.loading import load_generator
    from dpinstruct.training import dp_generator

    if not lrs or any(not lr > 0 for lr in lrs):
        raise ConfigError("--lrs", f"need positive learning rates, got {lrs}")
    public = read_public(PUBLIC_ROWS, columns=["id", "instruction"])
    if rows is not None:  # a seeded cap (tests, quick looks)
        public = public.sample(n=min(rows, len(public)), random_state=seed).sort_index()
    train, heldout = split_public(public, seed, heldout_share)
    if train.empty or heldout.empty:
        raise InputError(PUBLIC_ROWS, f"the split left {len(train)} train and {len(heldout)} held-out rows")
    cfg = TrainGenerator.from_params(params)
    count_component = (DpCount.from_params(params).sigma, 1.0, 1)  # the real run's count, same calibration
    model, tokenizer = load_generator(GENERATOR_DIR)
    base_nll, scored = heldout_nll(model, tokenizer, heldout.instruction.tolist(), cfg)
    del model
    runs = []
    with tempfile.TemporaryDirectory(prefix="dpinstruct-tune-", dir=workdir) as tmp:
        for lr in lrs:
            run_params = copy.deepcopy(params)
            run_params["train_generator"]["lr"] = float(lr)
            started = time.perf_counter()
            fitted = dp_generator.fit(run_params, train.instruction.tolist(), units=None, noisy_count=float(len(train)),
                                      count_component=count_component, run_key=("tune", float(lr)),
                                      checkpoint_dir=Path(tmp) / f"lr{lr:g}" / "checkpoints",
                                      live_dir=Path(tmp) / f"lr{lr:g}" / "live", desc=f"tune lr {lr:g}")
            train_s = time.perf_counter() - started
            nll, _ = heldout_nll(fitted.model, fitted.tokenizer, heldout.instruction.tolist(), cfg)
            run = {"lr": float(lr), "heldout_nll": nll, "train_s": round(train_s, 1),
                   "score_s": round(time.perf_counter() - started - train_s, 1)}
            if samples:
                t0 = time.perf_counter()
                run["pool_yield"] = pool_yield(fitted.model, fitted.tokenizer, params, samples)
                run["yield_s"] = round(time.perf_counter() - t0, 1)
            log.info("tune lr %g: held-out NLL %.4f, training %.0f s", lr, nll, train_s)
            runs.append(run)
            p = fitted.plan
            del fitted
    best = min(runs, key=lambda r: r["heldout_nll"])
    return {"source": f"{PUBLIC_ROWS} (public), split by a seeded hash of id (seed {seed}): {len(train)} train, "
                      f"{len(heldout)} held-out ({scored} scored: the rest exceed max_seq_len)",
            "train_rows": len(train), "heldout_rows": len(heldout), "heldout_scored": scored,
            "plan": {"epsilon": params["privacy"]["epsilon"], "composed_epsilon": p.composed_epsilon,
                     "noise_multiplier": p.noise_multiplier, "sampling_rate": p.sampling_rate, "steps": p.steps,
                     "clip_norm": p.clip_norm, "expected_batch_size": p.expected_batch_size},
            "base_heldout_nll": base_nll, "runs": runs, "best_lr": best["lr"],
            "current_lr": cfg.lr}


# --- the command ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="<what>")
    clip = sub.add_parser("ppo-clip",
                          help="per-prompt DP-PPO gradient norms on public IMDb prompts -> rl.dp_ppo.clip_norm",
                          description=ppo_clip.__doc__)
    clip.add_argument("--prompts", type=int, default=128, help="public evaluation prompts measured (default 128)")
    lr = sub.add_parser("generator-lr", help="DP generator runs on public FLAN rows per lr -> train_generator.lr",
                        description=generator_lr.__doc__)
    lr.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS),
                    help="the grid (default 2e-3 6e-3 1.2e-2)")
    lr.add_argument("--heldout-share", type=float, default=HELDOUT_SHARE)
    lr.add_argument("--rows", type=int, help="a seeded sample of the public rows (default: all)")
    lr.add_argument("--samples", type=int, default=0, help="also the pool yield of this many samples (default 0: off)")
    for p in (clip, lr):
        p.add_argument("--seed", type=int, default=0, help="prompt sample and rollout seed / split seed (public)")
        p.add_argument("-S", "--set", action="append", metavar="KEY=VALUE",
                       help="override a params.yaml value for this run (repeatable), e.g. -S rl.dp_ppo.new_tokens=8")
        p.add_argument("--out", help="also write the result as JSON here")


def _print_clip(r: dict) -> None:
    q = r["quantiles"]
    print(f"per-prompt DP-PPO gradient norm at the first step, {r['prompts']} public prompts "
          f"({r['rollouts']} rollouts x {r['new_tokens']} tokens); policy: {r['policy']}")
    print(f"  10%: {q['q10']:.4g}   50%: {q['q50']:.4g}   90%: {q['q90']:.4g}   (mean {r['mean']:.4g})")
    print(f"suggested rl.dp_ppo.clip_norm (the 90th percentile): {r['suggested_clip_norm']:g}   "
          f"(current {r['current_clip_norm']:g})   [{r['seconds']:.0f} s]")


def _print_lr(r: dict) -> None:
    p = r["plan"]
    print(f"DP generator on public FLAN rows: {r['source']}")
    print(f"plan: epsilon {p['epsilon']} (composed {p['composed_epsilon']:.3f}), sigma {p['noise_multiplier']:.4f}, "
          f"q {p['sampling_rate']:g}, T {p['steps']}, C {p['clip_norm']:g}, "
          f"expected batch {p['expected_batch_size']:.1f}")
    print(f"base generator (no training): held-out NLL {r['base_heldout_nll']:.4f}")
    yields = any("pool_yield" in run for run in r["runs"])
    print("| lr | held-out NLL per token | training | scoring |" + (" pool yield |" if yields else ""))
    print("|---|---|---|---|" + ("---|" if yields else ""))
    for run in r["runs"]:
        mark = " **best**" if run["lr"] == r["best_lr"] else ""
        print(f"| {run['lr']:g}{mark} | {run['heldout_nll']:.4f} | {run['train_s']:.0f} s | {run['score_s']:.0f} s |"
              + (f" {run['pool_yield']:.1%} |" if yields else ""))
    print(f"best lr (lowest held-out NLL): {r['best_lr']:g}   (current train_generator.lr {r['current_lr']:g})")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        params = override(P.load(), args.set)
        if args.what == "ppo-clip":
            result = ppo_clip(params, prompts=args.prompts, seed=args.seed)
            _print_clip(result)
        else:
            result = generator_lr(params, lrs=tuple(args.lrs), seed=args.seed, heldout_share=args.heldout_share,
                                  rows=args.rows, samples=args.samples)
            _print_lr(result)
    except PipelineError as e:
        print(f"tune failed: {e}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(finite(result), indent=2, sort_keys=True) + "\n")
    return 0
