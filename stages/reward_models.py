"""Stage `reward_models`: the two NON-private reward models, for comparison and evaluation only.

* ``reference``: the same head, data (the ``reward`` part), sampling rate, steps and learning rate
  as `dp_reward_model`, without clipping or noise: what the DP one would be without privacy.
* ``gold``: the same recipe on ALL comparisons (both parts). It scores the aligned policies'
  answers in `evaluate_rlhf` and nothing else: it has seen every private pair without DP, so the
  lineage check refuses it (``meta.evaluation_only`` in dvc.yaml) as an input of any stage that is
  not an evaluation.
Both are class private. Their sampling draws come from a public seeded stream: no DP claim rests on
them. Writes data/models/reward_reference and data/models/gold_reward.
"""
from __future__ import annotations

import hashlib
import logging
import math

import pandas as pd
import torch
from tqdm import tqdm

from dpinstruct.io import params as P
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.rlhf import DpRewardModel
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.rl import bradley_terry as bt
from dpinstruct.rl.preference_reward import Backbone, PreferenceReward
from dpinstruct.training.dp_adam import DPAdam

log = logging.getLogger("stages.reward_models")
STAGE = "reward_models"
FEATURES = "data/rlhf/features.parquet"
MODELS = {"reference": ("data/models/reward_reference", ["reward"]),
          "gold": ("data/models/gold_reward", ["reward", "heldout"])}


def reward_models(params: dict, out) -> None:
    cfg = DpRewardModel.from_params(params)  # the recipe of the DP model, without its privacy
    features = pd.read_parquet(FEATURES)
    for name, (folder, parts) in MODELS.items():
        pair_deltas = bt.deltas(features[features.partition.isin(parts)])
        stream = DPRandom(hashlib.sha256(f"{STAGE}/{name}/{cfg.seed}".encode()).digest())  # public: not DP
        torch.manual_seed(cfg.seed)
        head = bt.BradleyTerryHead(pair_deltas.shape[1])
        dp = DPAdam(head, lr=cfg.lr, noise_multiplier=0.0, clip_norm=math.inf,
                    # exact q x N: a private, evaluation-only model (never published)
                    expected_batch_size=cfg.sampling_rate * len(pair_deltas), noise=stream)
        bt.train_head(dp, pair_deltas, stream, cfg.sampling_rate,
                      tqdm(range(cfg.steps), desc=f"{name} reward model steps", unit="step"))
        PreferenceReward(Backbone.from_params(params), bt.head_weight(head)).save(
            out.path(folder), trained_on=f"hh_rlhf parts {parts}, NOT private: evaluation only")
        log.info("%s reward model trained on %s", name, parts)


def main() -> None:
    with run_stage(STAGE) as out:
        reward_models(P.load(), out)


if __name__ == "__main__":
    main()
