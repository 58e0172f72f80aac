"""Benchmark of DP-PPO (issue: DP alignment with RL): rollout new tokens/s, and one DP-PPO step's
time against the same step without DP.

Run from the repository root after `dvc repro dp_sft sentiment_reward`:
    .venv/bin/python -m tests.benchmarks.bench_ppo [--prompts 125] [--repeats 3]
With the stage's params (rollouts, new_tokens, LoRA, micro-batches): `prompts` PPO-part prompts are
rolled out once, recording the trunk below the adapter (new tokens/s, counted as prompts x rollouts x new_tokens), rewarded and shaped;
the old and reference log-probabilities come from that trunk (timed);
then the same micro-batches take `repeats` DP steps (per-prompt clipping and noise, opacus) and
`repeats` plain Adam steps on the mean loss; the minimum of each is kept. Prints one JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import pandas as pd
import torch

from dpinstruct.io import params as P
from dpinstruct.io.settings.rl import DpPpo
from dpinstruct.models.loading import GENERATOR_DIR
from dpinstruct.models.lora import lora_model, merged_model
from dpinstruct.models.trunk import first_adapted_layer
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.rl import ppo
from dpinstruct.rl.reward import SentimentReward
from dpinstruct.training.dp_adam import DPAdam
from stages import dp_ppo as stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=125)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = DpPpo.from_params(P.load())
    s = stage.settings(cfg)
    torch.manual_seed(0)
    policy, tokenizer = lora_model(merged_model(GENERATOR_DIR, stage.SFT_ADAPTER), cfg.lora)
    prompts = pd.read_parquet(stage.PROMPTS)
    prompt_ids = prompts[prompts.partition == cfg.partition].prompt_ids.map(list).tolist()[:args.prompts]
    prompt_len = len(prompt_ids[0])
    start = time.perf_counter()
    begin = first_adapted_layer(policy)
    keys = [str(i) for i in range(len(prompt_ids))]
    ids, hidden = ppo.rollouts_and_trunk(policy, prompt_ids, s, ppo.rollout_seeds(ppo.public_seed(0), keys, s.rollouts),
                                         begin)
    rollout_seconds = time.perf_counter() - start
    reward = SentimentReward.load(stage.REWARD_DIR)
    rewards = reward.logits(tokenizer.batch_decode(ids[:, prompt_len:], skip_special_tokens=True))
    start = time.perf_counter()
    old, ref = ppo.old_and_reference_logprobs(policy, hidden, ids, prompt_len, begin)
    logprob_seconds = time.perf_counter() - start
    kl = ppo.kl_to_reference(old, ref).numpy()
    micro = ppo.micro_batches(ids, hidden, old, ppo.advantages(rewards, kl, s.rollouts, s.kl_coef), s.rollouts,
                                int(cfg["prompts_per_micro"]))
    loss_fn = ppo.ppo_loss(s.clip_range, prompt_len, begin)
    dp = DPAdam(copy.deepcopy(policy), lr=1e-3, noise_multiplier=1.0, clip_norm=1.0,
                expected_batch_size=len(prompt_ids), noise=DPRandom(None))
    private = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        dp.step(micro, loss_fn=loss_fn)
        private.append(time.perf_counter() - start)
    plain_model = copy.deepcopy(policy)
    plain_opt = torch.optim.Adam([p for p in plain_model.parameters() if p.requires_grad], lr=1e-3)
    plain = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for m in micro:
            loss_fn(plain_model, m).mean().backward()
        plain_opt.step()
        plain_opt.zero_grad()
        plain.append(time.perf_counter() - start)
    new_tokens = len(ids) * s.new_tokens
    print(json.dumps({"prompts": len(prompt_ids), "rollouts": s.rollouts, "new_tokens": s.new_tokens,
                      "rollout_tokens_per_s": round(new_tokens / rollout_seconds, 1),
                      "rollout_seconds": round(rollout_seconds, 2),
                      "old_and_reference_logprob_s": round(logprob_seconds, 2), "dp_step_s": round(min(private), 2),
                      "plain_step_s": round(min(plain), 2), "ratio": round(min(private) / min(plain), 2),
                      "mean_reward": float(np.mean(rewards))}, indent=2))


if __name__ == "__main__":
    main()
