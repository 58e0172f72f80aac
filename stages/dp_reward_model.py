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
from dpinstruct.io.settings.privacy import Budget, Randomness
from dpinstruct.io.settings.rlhf import DpRewardModel, Features
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, ledger
from dpinstruct.privacy.run_key import run_key
from dpinstruct.rl import bradley_terry as bt
from dpinstruct.rl.preference_reward import Backbone, PreferenceReward
from dpinstruct.training.mechanism import DPSGDMechanism, Scope

log = logging.getLogger("stages.dp_reward_model")
STAGE = "dp_reward_model"
SCOPE = Scope(STAGE, dataset="hh_rlhf", partition="reward",
                  privacy_unit="one comparison (chosen and rejected answer to one prompt)")
FEATURES = Path("data/rlhf/features.parquet")
MODEL_DIR = Path("data/models/dp_reward_model")
CHECKPOINT_DIR = Path("data/checkpoints/dp_reward_model")
LIVE_DIR = Path("dvclive/dp_reward_model")
COUNT = "hh_rlhf"  # the DP count of the reward part (stage dp_count@hh_rlhf)
# Every file the stage reads: bound into its DP streams (a test checks dvc.yaml's deps agree).
INPUTS = (FEATURES, dp_count.entry_path(COUNT))


def plan(cfg: DpRewardModel, budget: Budget) -> acct.DPSGDPlan:
    noisy_count, count_component, _ = dp_count.read(COUNT)
    return acct.plan_dp_sgd(budget, budget_name="rlhf.privacy", noisy_count=noisy_count,
                            sampling_rate=cfg.sampling_rate, steps=cfg.steps, clip_norm=cfg.clip_norm,
                            prior=[count_component], prior_label=f"the DP count of the {SCOPE.partition} part")


def dp_reward_model(params: dict, out) -> dict:
    cfg, budget = DpRewardModel.from_params(params), Budget.from_params(params, "rlhf.privacy")
    features_cfg = Features.from_params(params)  # the backbone: bound into the streams
    features = pd.read_parquet(FEATURES)
    features = features[features.partition == SCOPE.partition]
    if features.empty:
        raise InputError(FEATURES, f"no comparison in part {SCOPE.partition!r}", field="partition")
    pair_deltas = bt.deltas(features)
    p = plan(cfg, budget)  # refuses unsafe settings before any training
    mech = DPSGDMechanism(SCOPE, p, privacy=Randomness.from_params(params),
                          run_key=run_key(STAGE, (cfg.raw, budget.raw, features_cfg.raw), INPUTS),
                          checkpoint_dir=CHECKPOINT_DIR, live_dir=LIVE_DIR, checkpoint_every=cfg.checkpoint_every)
    torch.manual_seed(cfg.seed)
    head = bt.BradleyTerryHead(pair_deltas.shape[1])
    dp = mech.optimizer(head, lr=cfg.lr)
    bt.train_head(dp, pair_deltas, mech.loop.sampler, p.sampling_rate, mech.steps(desc="DP reward model steps"),
                  on_step=lambda r: mech.metrics.update(loss=r.loss, batch_size=r.batch_size))
    PreferenceReward(Backbone.from_params(params), bt.head_weight(head)).save(
        out.path(MODEL_DIR), trained_on=f"{SCOPE.dataset} part {SCOPE.partition}, under DP (see the ledger entry)")
    entry = mech.ledger_entry(params_hash=P.params_hash(cfg.raw, budget.raw))
    out.write_json(entry, ledger.entry_path(STAGE))
    log.info("dp_reward_model: epsilon %s (PRV %s) on partition %s of %s", entry["epsilon"], entry["epsilon_prv"],
             SCOPE.partition, SCOPE.dataset)
    return entry


def main() -> None:
    with run_stage(STAGE) as out:
        dp_reward_model(P.load(), out)


if __name__ == "__main__":
    main()
