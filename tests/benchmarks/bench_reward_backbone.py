"""Benchmark of the reward model's backbone (issue: DP reward model): the packaged sentence embedder
against the base generator, both frozen under the same Bradley-Terry head, on accuracy and time.

Run from the repository root after `dvc repro hh_prepare models`:
    .venv/bin/python -m tests.benchmarks.bench_reward_backbone [--train 600] [--draws 3]
For each backbone (``rlhf.features`` settings): features of both answers of the first ``train``
reward-part comparisons and of every held-out comparison (timed, per 1,000 texts); then the head
trained as `dp_reward_model` trains it (its sampling rate, steps, lr, clip norm) at ``rlhf.privacy``
and without DP, ``draws`` times each (noise and sampling from fresh OS streams), and its held-out
pairwise accuracy. Prints one JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import pandas as pd

from dpinstruct.io import params as P
from dpinstruct.io.settings.privacy import Budget, DpCount
from dpinstruct.io.settings.rlhf import DpRewardModel
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.rl import bradley_terry as bt
from dpinstruct.rl.preference_reward import Backbone, accuracy
from dpinstruct.training.dp_adam import DPAdam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args()
    params = P.load()
    cfg = DpRewardModel.from_params(params)
    pairs = pd.read_parquet("data/rlhf/pairs.parquet")
    train = pairs[pairs.partition == "reward"].head(args.train)
    heldout = pairs[pairs.partition == "heldout"]
    results = {"train_pairs": len(train), "heldout_pairs": len(heldout), "threads": os.cpu_count()}
    for kind in ("embedder", "generator"):
        params["rlhf"]["features"]["backbone"] = kind
        backbone = Backbone.from_params(params)
        start = time.perf_counter()
        feats = {name: {side: backbone.features(part.prompt.tolist(), part[side].tolist())
                        for side in ("chosen", "rejected")} for name, part in (("train", train), ("heldout", heldout))}
        seconds = time.perf_counter() - start
        deltas = feats["train"]["chosen"] - feats["train"]["rejected"]
        row = {"feature_seconds": round(seconds, 1),
               "seconds_per_1000_texts": round(1000 * seconds / (2 * (len(train) + len(heldout))), 1)}
        for label, budget in (("dp", Budget.from_params(params, "rlhf.privacy")),
                              ("non_private", Budget(epsilon=math.inf, delta=1e-5))):
            # as dp_count@hh_rlhf and dp_reward_model do it: a DP count of these comparisons (a fresh OS
            # draw, like the rest of this benchmark) gives the divisor q x N~ and is a prior of the calibration
            count_sigma = 0.0 if math.isinf(budget.epsilon) else DpCount.from_params(params).sigma
            noisy_count = dp_count.release(len(deltas), count_sigma, DPRandom(None))
            plan = acct.plan_dp_sgd(budget, budget_name="rlhf.privacy", noisy_count=noisy_count,
                                    sampling_rate=cfg.sampling_rate, steps=cfg.steps,
                                    clip_norm=cfg.clip_norm, prior=[(count_sigma, 1.0, 1)],
                                    prior_label="the DP count of the reward part")
            accs, start = [], time.perf_counter()
            for _ in range(args.draws):
                head, stream = bt.BradleyTerryHead(deltas.shape[1]), DPRandom(None)
                dp = DPAdam(head, lr=cfg.lr, noise_multiplier=plan.noise_multiplier,
                            clip_norm=plan.clip_norm, expected_batch_size=plan.expected_batch_size, noise=stream)
                bt.train_head(dp, deltas, stream, plan.sampling_rate, range(plan.steps))
                accs.append(accuracy(bt.head_weight(head), feats["heldout"]["chosen"], feats["heldout"]["rejected"]))
            row[label] = {"accuracy_mean": round(float(np.mean(accs)), 4), "accuracy_draws": [round(a, 4) for a in accs],
                          "train_seconds": round((time.perf_counter() - start) / args.draws, 2),
                          "epsilon": plan.target_epsilon}
        results[kind] = row
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
