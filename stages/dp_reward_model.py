"""Stage `dp_reward_model` (Wu et al., task (ii)): a Bradley-Terry reward model under DP.

The head of ``dpinstruct/rl/preference_reward`` is trained on the ``reward`` part of the private
comparisons (data/rlhf/features.parquet) with DP-Adam: Poisson sampling at ``sampling_rate``, each
comparison's gradient clipped to C as one example, Gaussian noise once per step, all drawn from the
secret key (``DPLoop``). The privacy unit is one comparison; the neighbouring relation is adding or
removing one. Budget first: the noise is calibrated so that this stage alone meets
``rlhf.privacy`` (it is the only mechanism on the hh_rlhf dataset). Writes
data/models/dp_reward_model (dp), its ledger entry (dataset hh_rlhf, partition reward) and DVCLive
curves (private: losses of private batches). Its accuracy is measured by `evaluate_rlhf`, on the
held-out part this stage never reads.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from dpinstruct.io import params as P
from dpinstruct.io.errors import InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, ledger
from dpinstruct.privacy.dp_adam import DPAdam
from dpinstruct.privacy.dp_loop import DPLoop
from dpinstruct.privacy.run_key import run_key
from dpinstruct.rl import bradley_terry as bt
from dpinstruct.rl.preference_reward import Backbone, PreferenceReward

log = logging.getLogger("stages.dp_reward_model")
STAGE, DATASET, PARTITION = "dp_reward_model", "hh_rlhf", "reward"
FEATURES = Path("data/rlhf/features.parquet")
MODEL_DIR = Path("data/models/dp_reward_model")
CHECKPOINT_DIR = Path("data/checkpoints/dp_reward_model")
LIVE_DIR = Path("dvclive/dp_reward_model")
COUNT = "hh_rlhf"  # the DP count of the reward part (stage dp_count@hh_rlhf)
# Every file the stage reads: bound into its DP streams (a test checks dvc.yaml's deps agree).
INPUTS = (FEATURES, dp_count.entry_path(COUNT))


def plan(params: dict) -> acct.DPSGDPlan:
    cfg = params["rlhf"][STAGE]
    noisy_count, count_component, _ = dp_count.read(COUNT)
    return acct.plan_dp_sgd(params["rlhf"].get("privacy"), budget_name="rlhf.privacy", noisy_count=noisy_count,
                            sampling_rate=P.as_float(cfg["sampling_rate"]), steps=int(cfg["steps"]),
                            clip_norm=P.as_float(cfg["clip_norm"]), prior=[count_component],
                            prior_label=f"the DP count of the {PARTITION} part")


def dp_reward_model(params: dict, out) -> dict:
    cfg = params["rlhf"][STAGE]
    phash = P.params_hash(cfg, params["rlhf"].get("privacy"))
    features = pd.read_parquet(FEATURES)
    features = features[features.partition == PARTITION]
    if features.empty:
        raise InputError(FEATURES, f"no comparison in part {PARTITION!r}", field="partition")
    pair_deltas = bt.deltas(features)
    p = plan(params)  # refuses unsafe settings before any training
    log.info("plan: q=%.4g T=%d sigma=%.4f C=%s -> epsilon %.3f (PLD), %.3f (PRV) at delta %g", p.sampling_rate,
             p.steps, p.noise_multiplier, p.clip_norm, p.composed_epsilon, p.composed_epsilon_prv, p.delta)
    key = run_key(STAGE, (cfg, params["rlhf"].get("privacy"), p.as_dict(), params["rlhf"].get("features")), INPUTS)
    loop = DPLoop(STAGE, privacy=params["privacy"], run_key=key,
                  steps=p.steps, noise_multiplier=p.noise_multiplier, sampling_rate=p.sampling_rate, delta=p.delta,
                  checkpoint_dir=CHECKPOINT_DIR, live_dir=LIVE_DIR, checkpoint_every=int(cfg["checkpoint_every"]))
    torch.manual_seed(int(cfg["seed"]))
    head = bt.BradleyTerryHead(pair_deltas.shape[1])
    dp = DPAdam(head, lr=P.as_float(cfg["lr"]), noise_multiplier=p.noise_multiplier, clip_norm=p.clip_norm,
                expected_batch_size=p.expected_batch_size, noise=loop.noise)
    bt.train_head(dp, pair_deltas, loop.sampler, p.sampling_rate,
                  loop.iterate(model=head, optimizer=dp.optimizer, desc="DP reward model steps"),
                  on_step=lambda r: loop.metrics.update(loss=r.loss, batch_size=r.batch_size))
    PreferenceReward(Backbone.from_params(params), bt.head_weight(head)).save(
        out.path(MODEL_DIR), trained_on=f"{DATASET} part {PARTITION}, under DP (see the ledger entry)")
    entry = ledger.make_entry(stage=STAGE, mechanism="poisson_subsampled_gaussian", dataset=DATASET,
                              partition=PARTITION, noise_multiplier=p.effective_noise_multiplier,
                              sampling_rate=p.sampling_rate, steps=p.steps, sensitivity=p.clip_norm, delta=p.delta,
                              event=acct.dp_sgd_event(p.effective_noise_multiplier, p.sampling_rate, p.steps),
                              privacy_unit="one comparison (chosen and rejected answer to one prompt)",
                              plan=p.as_dict(), secure_mode=not loop.noise.replayable, params_hash=phash)
    out.write_json(entry, ledger.entry_path(STAGE))
    log.info("dp_reward_model: epsilon %s (PRV %s) on partition %s of %s", entry["epsilon"], entry["epsilon_prv"],
             PARTITION, DATASET)
    return entry


def main() -> None:
    with run_stage(STAGE) as out:
        dp_reward_model(P.load(), out)


if __name__ == "__main__":
    main()
