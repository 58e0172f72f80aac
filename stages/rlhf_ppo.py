"""Stage `rlhf_ppo@<source>`: RLHF of the base generator with PPO, rewarded by the DP reward model.

``source`` names the prompts (``rlhf.rlhf_ppo.sources``): ``release`` (the DP synthetic
instructions, data/release/instructions.parquet: post-processing of a DP output, it costs the
instruction dataset nothing more), ``real`` (the private train split: the non-private reference,
class private) or ``flan`` (the public FLAN set). Everything else is the same for every source:
the policy (a fresh LoRA adapter on the base generator), the reference (the base), the reward
(data/models/dp_reward_model: a DP output of hh_rlhf), steps, prompts per step, rollouts and
seeds, so the comparison in `evaluate_rlhf` sees the prompts only. The step is the PPO core's
(``dpinstruct/rl/ppo.py``; the chat prompts: ``dpinstruct/rl/rlhf.py``) with a plain Adam update
(not a DP mechanism: nothing it reads needs one). Instructions whose chat prompt exceeds
``max_prompt_tokens`` are skipped (a rule on each alone). Writes
data/adapters/rlhf/<source> and DVCLive curves (mean reward and KL per step).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from dpinstruct.io import params as P
from dpinstruct.io.errors import ConfigError, InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.rlhf import RlhfPpo
from dpinstruct.models.loading import GENERATOR_DIR
from dpinstruct.models.lora import lora_model, save_adapter
from dpinstruct.models.trunk import first_adapted_layer
from dpinstruct.rl import ppo, rlhf
from dpinstruct.rl.preference_reward import PreferenceReward

log = logging.getLogger("stages.rlhf_ppo")
STAGE = "rlhf_ppo"
SOURCES = {"release": "data/release/instructions.parquet", "real": "data/prepared/train.parquet",
           "flan": "data/prepared/public.parquet"}
REWARD_DIR = "data/models/dp_reward_model"
ADAPTERS, LIVE = Path("data/adapters/rlhf"), Path("dvclive/rlhf_ppo")
BATCH_ROWS = 16  # rollouts per forward and backward pass of the top layers (memory only)


def rlhf_ppo(source: str, params: dict, out) -> dict:
    cfg = RlhfPpo.from_params(params)
    if source not in SOURCES:
        raise ConfigError(f"{STAGE} source", f"unknown prompt source {source!r}; one of {sorted(SOURCES)}")
    s, seed = rlhf.settings(cfg), cfg.seed
    torch.manual_seed(seed)  # LoRA init
    policy, tokenizer = lora_model(GENERATOR_DIR, cfg.lora)
    table = pd.read_parquet(SOURCES[source], columns=["id", "instruction"])
    ids, keep = rlhf.chat_prompts(tokenizer, table.instruction.tolist(), cfg.system_prompt, cfg.max_prompt_tokens)
    table, ids = table[keep].reset_index(drop=True), [p for p, k in zip(ids, keep) if k]
    log.info("%d of %d %s instructions fit max_prompt_tokens %s", len(table), len(keep), source, cfg.max_prompt_tokens)
    per_step = cfg.prompts_per_step
    if len(table) < per_step:
        raise InputError(SOURCES[source], f"{len(table)} instructions fit max_prompt_tokens "
                                          f"{cfg.max_prompt_tokens}, fewer than prompts_per_step {per_step}")
    reward = PreferenceReward.load(REWARD_DIR)
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    rng = np.random.default_rng(seed)  # the same draws for every source of the same size
    from dvclive import Live

    live = Live(str(LIVE / source), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
    policy.eval()
    start = first_adapted_layer(policy)
    for step in tqdm(range(cfg.steps), desc=f"RLHF-PPO ({source} prompts)", unit="step"):
        idx = np.sort(rng.choice(len(table), size=per_step, replace=False))
        keys = [f"{step}/{table.id[i]}" for i in idx]
        r = ppo.rollouts(policy, [ids[i] for i in idx], s, ppo.rollout_seeds(ppo.public_seed(seed), keys, s.rollouts),
                         eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
        instructions = [table.instruction[i] for i in idx for _ in range(s.rollouts)]
        rewards = reward.scores(instructions, tokenizer.batch_decode(r.responses, skip_special_tokens=True))
        hidden = ppo.trunk_states(policy, r.ids, start, attention_mask=r.mask)  # the layers below the adapter, once
        old_logp, ref_logp = ppo.old_and_reference_logprobs(policy, hidden, r.ids, r.width, start, BATCH_ROWS,
                                                            **r.masks)
        kl = ppo.kl_to_reference(old_logp, ref_logp).numpy()
        adv = ppo.advantages(rewards, kl, s.rollouts, s.kl_coef)
        ppo.train_step(policy, optimizer, ppo.row_batches(r.ids, hidden, old_logp, adv, BATCH_ROWS, **r.masks),
                       ppo.ppo_loss(s.clip_range, r.width, start))
        for name, value in {"reward": float(rewards.mean()), "kl": float(kl.mean()),
                            "answer_tokens": float(r.response_mask.sum(1).mean())}.items():
            live.log_metric(name, value)
        live.next_step()
    live.end()
    save_adapter(policy, out.path(ADAPTERS / source))
    return {"source": source, "prompts": len(table)}


def main() -> None:
    with run_stage(f"{STAGE}@{sys.argv[1]}") as out:
        rlhf_ppo(sys.argv[1], P.load(), out)


if __name__ == "__main__":
    main()
