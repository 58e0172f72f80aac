"""Stage `dp_ppo` (Wu et al., step 2 of task (i)): DP-PPO of a LoRA policy toward positive reviews.

The policy is the DP-SFT model (base + dp_sft adapter, merged) with a fresh LoRA adapter; the
reference is that model with the adapter disabled. The privacy unit is one private prompt (a
review's opening in the ``partition`` part of data/rl/prompts.parquet): every step Poisson-samples
prompts, draws ``rollouts`` continuations of each (each from a generator keyed by the run key, the
step and that prompt's id: dpinstruct/rl/ppo.py), rewards them with the public classifier, shapes
the reward with a KL penalty, subtracts the mean of the prompt's own rollouts, and DP-Adam clips the
prompt's whole contribution to C as ONE example, noise once per step. Budget first: with the
part's DP count it meets ``rl.privacy`` (in parallel with DP-SFT; on the SFT part it composes with
DP-SFT's entry). Writes data/adapters/dp_ppo (dp), its ledger entry and DVCLive curves (private).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import torch

from dpinstruct.io import params as P
from dpinstruct.io.errors import InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.privacy import Budget, Randomness
from dpinstruct.io.settings.rl import DpPpo
from dpinstruct.models.loading import GENERATOR_DIR
from dpinstruct.models.lora import lora_model, merged_model, save_adapter
from dpinstruct.models.trunk import first_adapted_layer
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, ledger
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.privacy.run_key import run_key
from dpinstruct.rl import ppo
from dpinstruct.rl.reward import SentimentReward
from dpinstruct.training.mechanism import DPSGDMechanism, Scope

log = logging.getLogger("stages.dp_ppo")
STAGE, DATASET = "dp_ppo", "imdb"
PROMPTS = Path("data/rl/prompts.parquet")
SFT_ADAPTER = Path("data/adapters/dp_sft")
SFT_LEDGER = Path("metrics/privacy/dp_sft.json")
REWARD_DIR = Path("data/models/sentiment_reward")
ADAPTER_DIR = Path("data/adapters/dp_ppo")
CHECKPOINT_DIR = Path("data/checkpoints/dp_ppo")
LIVE_DIR = Path("dvclive/dp_ppo")
COUNTS = ("imdb_sft", "imdb_ppo")  # DP counts of the two parts; rl.dp_ppo.partition picks one


def settings(cfg: DpPpo) -> ppo.PPOSettings:
    return ppo.PPOSettings.from_params(cfg)


def plan(cfg: DpPpo, budget: Budget) -> acct.DPSGDPlan:
    """Its prior: the read part's DP count, and DP-SFT when it reads DP-SFT's part (sequential)."""
    noisy_count, count_component, _ = dp_count.read(f"imdb_{cfg.partition}")
    prior = [count_component]
    sft = json.loads(SFT_LEDGER.read_text())
    if cfg.partition == sft["partition"]:  # the same records as DP-SFT: sequential composition
        prior.extend(acct.prv_components(ledger.event_from_json(sft["dp_event"])))  # its stored event
    return acct.plan_dp_sgd(budget, budget_name="rl.privacy", noisy_count=noisy_count,
                            sampling_rate=cfg.sampling_rate, steps=cfg.steps, clip_norm=cfg.clip_norm,
                            epochs_per_batch=cfg.epochs_per_batch, prior=prior,
                            prior_label=f"the DP count and earlier mechanisms on part {cfg.partition}")


# Every file or folder the stage reads (both parts' counts): bound into its DP streams.
INPUTS = (PROMPTS, GENERATOR_DIR, SFT_ADAPTER, SFT_LEDGER, REWARD_DIR, *map(dp_count.entry_path, COUNTS))


def dp_ppo(params: dict, out) -> dict:
    cfg, budget = DpPpo.from_params(params), Budget.from_params(params, "rl.privacy")
    randomness = Randomness.from_params(params)
    s = settings(cfg)
    prompts = pd.read_parquet(PROMPTS)
    prompts = prompts[prompts.partition == cfg.partition].reset_index(drop=True)
    if prompts.empty:
        raise InputError(PROMPTS, f"no prompt in part {cfg.partition!r} (rl.dp_ppo.partition)", field="partition")
    p = plan(cfg, budget)  # refuses unsafe settings before any model work
    key = run_key(STAGE, (cfg.raw, budget.raw, p.as_dict()), INPUTS)
    scope = Scope(STAGE, dataset=DATASET, partition=cfg.partition, privacy_unit="one prompt (all its rollouts)")
    mech = DPSGDMechanism(scope, p, privacy=randomness, run_key=key, checkpoint_dir=CHECKPOINT_DIR,
                          live_dir=LIVE_DIR, checkpoint_every=cfg.checkpoint_every)
    # rollout randomness is keyed too, with the mechanism's whole binding (plan and machine included):
    # nobody without the key can replay a step's continuations, and two machines never share them
    rollout_seeds = DPRandom.for_purpose(f"{STAGE}/rollouts", *mech.run_key, privacy=randomness)
    torch.manual_seed(cfg.seed)  # LoRA init only
    policy, tokenizer = lora_model(merged_model(GENERATOR_DIR, SFT_ADAPTER), cfg.lora)
    reward = SentimentReward.load(REWARD_DIR)
    dp = mech.optimizer(policy, lr=cfg.lr)
    prompt_ids, prompt_keys = prompts.prompt_ids.map(list).tolist(), prompts.id.tolist()
    prompt_len = len(prompt_ids[0])
    start = first_adapted_layer(policy)
    loss_fn = ppo.ppo_loss(s.clip_range, prompt_len, start)
    for step in mech.steps(desc="DP-PPO steps"):
        idx = mech.sample(len(prompt_ids))
        if len(idx) == 0:
            for _epoch in range(p.epochs_per_batch):
                dp.step([])  # an empty Poisson batch still takes its noise-only steps
            mech.metrics.update(batch_size=0)
            continue
        generators = ppo.rollout_seeds(lambda key, j, step=step: rollout_seeds.child_seed(step, key, j),
                                       [prompt_keys[i] for i in idx], s.rollouts)
        ids, hidden = ppo.rollouts_and_trunk(policy, [prompt_ids[i] for i in idx], s, generators, start)
        rewards = reward.logits(tokenizer.batch_decode(ids[:, prompt_len:], skip_special_tokens=True))
        old_logp, ref_logp = ppo.old_and_reference_logprobs(policy, hidden, ids, prompt_len, start)
        kl = ppo.kl_to_reference(old_logp, ref_logp).numpy()
        adv = ppo.advantages(rewards, kl, s.rollouts, s.kl_coef)
        micro = ppo.micro_batches(ids, hidden, old_logp, adv, s.rollouts, cfg.prompts_per_micro)
        for _epoch in range(p.epochs_per_batch):
            result = dp.step(micro, loss_fn=loss_fn)
        mech.metrics.update(reward=float(rewards.mean()), kl=float(kl.mean()), batch_size=result.batch_size)
    save_adapter(policy, out.path(ADAPTER_DIR))
    entry = mech.ledger_entry(params_hash=P.params_hash(cfg.raw, budget.raw))
    out.write_json(entry, ledger.entry_path(STAGE))
    log.info("dp_ppo: epsilon %s (PRV %s) on partition %s of %s", entry["epsilon"], entry["epsilon_prv"],
             cfg.partition, DATASET)
    return entry


def main() -> None:
    with run_stage(STAGE) as out:
        dp_ppo(P.load(), out)


if __name__ == "__main__":
    main()
