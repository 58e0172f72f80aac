"""Stage `dp_sft` (Wu et al., step 1): DP-LoRA SFT of the policy on the private SFT part of IMDb.

The base generator learns to write movie reviews from data/rl/sft.parquet (the opening
``sft_tokens`` tokens of each review in the SFT part), with the same DP-Adam trainer as
`train_generator` (Poisson sampling at ``sampling_rate``, per-review clipping, noise once per step,
secret-keyed randomness, resumable checkpoints): the privacy unit is one review. Budget first: the
noise is calibrated so that this stage meets ``rl.privacy`` alone; DP-PPO reads a disjoint part, so
the two compose in parallel. Writes data/adapters/dp_sft (dp), its ledger entry (dataset imdb,
partition sft) and DVCLive curves (private: losses of private batches).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpinstruct.io import params as P
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.privacy import Budget, Randomness
from dpinstruct.io.settings.rl import DpSft
from dpinstruct.models.loading import GENERATOR_DIR
from dpinstruct.models.lora import lora_model, save_adapter
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, ledger
from dpinstruct.privacy.run_key import run_key
from dpinstruct.training.dp_adam import collate, micro_batches
from dpinstruct.training.mechanism import DPSGDMechanism, Scope

log = logging.getLogger("stages.dp_sft")
STAGE = "dp_sft"
SCOPE = Scope(STAGE, dataset="imdb", partition="sft", privacy_unit="one review of the sft part")
REVIEWS = Path("data/rl/sft.parquet")
ADAPTER_DIR = Path("data/adapters/dp_sft")
CHECKPOINT_DIR = Path("data/checkpoints/dp_sft")
LIVE_DIR = Path("dvclive/dp_sft")
COUNT = "imdb_sft"  # the DP count of the part (stage dp_count@imdb_sft)
# Every file or folder the stage reads: bound into its DP streams (a test checks dvc.yaml's deps agree).
INPUTS = (REVIEWS, GENERATOR_DIR, dp_count.entry_path(COUNT))


def plan(cfg: DpSft, budget: Budget) -> acct.DPSGDPlan:
    noisy_count, count_component, _ = dp_count.read(COUNT)
    return acct.plan_dp_sgd(budget, budget_name="rl.privacy", noisy_count=noisy_count,
                            sampling_rate=cfg.sampling_rate, steps=cfg.steps, clip_norm=cfg.clip_norm,
                            prior=[count_component], prior_label=f"the DP count of the {SCOPE.partition} part")


def dp_sft(params: dict, out) -> dict:
    cfg, budget = DpSft.from_params(params), Budget.from_params(params, "rl.privacy")
    texts = pd.read_parquet(REVIEWS, columns=["text"]).text.tolist()
    p = plan(cfg, budget)  # refuses unsafe settings before any model work
    mech = DPSGDMechanism(SCOPE, p, privacy=Randomness.from_params(params),
                          run_key=run_key(STAGE, (cfg.raw, budget.raw), INPUTS),
                          checkpoint_dir=CHECKPOINT_DIR, live_dir=LIVE_DIR, checkpoint_every=cfg.checkpoint_every)
    torch.manual_seed(cfg.seed)  # LoRA init only
    model, tokenizer = lora_model(GENERATOR_DIR, cfg.lora)
    examples = tokenizer(texts, add_special_tokens=False)["input_ids"]  # the whole text is the target
    lengths = np.array([len(e) for e in examples])
    dp = mech.optimizer(model, lr=cfg.lr)
    for _ in mech.steps(desc="DP-SFT steps"):
        micro = [collate([examples[i] for i in b], 0, tokenizer.pad_token_id)
                 for b in micro_batches(mech.sample(len(examples)), lengths, cfg.micro_batch_tokens)]
        result = dp.step(micro)
        mech.metrics.update(loss=result.loss, batch_size=result.batch_size)
    save_adapter(model, out.path(ADAPTER_DIR))
    entry = mech.ledger_entry(params_hash=P.params_hash(cfg.raw, budget.raw))
    out.write_json(entry, ledger.entry_path(STAGE))
    log.info("dp_sft: epsilon %s (PRV %s) on partition %s of %s", entry["epsilon"], entry["epsilon_prv"],
             SCOPE.partition, SCOPE.dataset)
    return entry


def main() -> None:
    with run_stage(STAGE) as out:
        dp_sft(P.load(), out)


if __name__ == "__main__":
    main()
