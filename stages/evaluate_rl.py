"""Stage `evaluate_rl`: how positive each policy's continuations of held-out PUBLIC review openings are.

For the base generator, the DP-SFT model and the DP-PPO policy (named ``sft`` and ``ppo`` when their
ledger entries say the run was not private, as with ``-S rl.privacy.epsilon=.inf``): one continuation
of ``new_tokens`` tokens per evaluation prompt (seeded by the prompt's id: public randomness, the
same uniforms for every policy, so paired differences see the policies, not the draws), scored by the
sentiment reward; mean reward with a bootstrap interval over prompts, the paired differences
(ppo - sft, sft - base), the per-token KL to the reference (the SFT model) on each policy's own
samples, and distinct-1/2. Writes metrics/rl.json and plots/rl/reward.csv. Class dp: public
prompts, DP models, a public reward model and the (dp) ledger.
"""
from __future__ import annotations

import json
import logging

import pandas as pd

from dpinstruct.alignment.scoring import bootstrap_mean
from dpinstruct.io import params as P
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.rl import DpPpo, EvaluateRl, RlData
from dpinstruct.models.loading import GENERATOR_DIR, load_generator
from dpinstruct.models.lora import merged_model
from dpinstruct.rl import ppo
from dpinstruct.rl.reward import SentimentReward

log = logging.getLogger("stages.evaluate_rl")
STAGE = "evaluate_rl"
PROMPTS = "data/rl/eval_prompts.parquet"
SFT_ADAPTER, PPO_ADAPTER = "data/adapters/dp_sft", "data/adapters/dp_ppo"
LEDGERS = {"dp_sft": "metrics/privacy/dp_sft.json", "dp_ppo": "metrics/privacy/dp_ppo.json"}
REWARD_DIR = "data/models/sentiment_reward"
METRICS, PLOT = "metrics/rl.json", "plots/rl/reward.csv"


def names() -> dict[str, str]:
    """dp_sft / dp_ppo, or sft / ppo for a non-private run (their ledger entries say which)."""
    private = {stage: json.loads(open(path).read())["private"] for stage, path in LEDGERS.items()}
    return {stage: stage if private[stage] else stage.removeprefix("dp_") for stage in LEDGERS}


def policies(sft):
    """(label, model) of each policy, the base loaded when needed; ``sft`` is the merged SFT model (also
    the reference), and the PPO adapter is merged into a copy of it."""
    import copy

    from peft import PeftModel

    yield "base", load_generator(GENERATOR_DIR)[0]
    yield "dp_sft", sft
    yield "dp_ppo", PeftModel.from_pretrained(copy.deepcopy(sft), PPO_ADAPTER).merge_and_unload()


def evaluate_rl(params: dict, out) -> dict:
    cfg, prompt_len = EvaluateRl.from_params(params), RlData.read(params, "prompt_tokens")
    new_tokens, temperature, top_p = DpPpo.read(params, "new_tokens", "temperature", "top_p")  # DP-PPO's sampling
    settings = ppo.PPOSettings(rollouts=1, new_tokens=new_tokens, temperature=temperature, top_p=top_p, kl_coef=0.0,
                               clip_range=1.0)
    prompts = pd.read_parquet(PROMPTS).sort_values("id").head(cfg.rows)
    prompt_ids, prompt_keys = prompts.prompt_ids.map(list).tolist(), prompts.id.tolist()
    reward = SentimentReward.load(REWARD_DIR)
    reference, tokenizer = merged_model(GENERATOR_DIR, SFT_ADAPTER)
    label = names()
    draws, seed = cfg.bootstrap, cfg.seed
    rewards, result = {}, {"rows": len(prompts), "mean_reward": {}, "kl_to_reference": {}, "distinct": {},
                           "reward": "positive-class logit of the sentiment classifier", "names": label}
    for stage, model in policies(reference):
        name = label.get(stage, stage)
        ids = ppo.rollouts(model, prompt_ids, settings, ppo.rollout_seeds(ppo.public_seed(seed), prompt_keys, 1)).ids
        continuations = ids[:, prompt_len:]
        rewards[name] = reward.logits(tokenizer.batch_decode(continuations, skip_special_tokens=True))
        kl = ppo.kl_to_reference(ppo.policy_logprobs(model, ids, prompt_len), ppo.policy_logprobs(reference, ids, prompt_len))
        result["mean_reward"][name] = bootstrap_mean(rewards[name], draws=draws, seed=seed)
        result["kl_to_reference"][name] = bootstrap_mean(kl.numpy() / settings.new_tokens, draws=draws, seed=seed)
        result["distinct"][name] = {f"distinct_{n}": ppo.distinct_n(continuations.tolist(), n) for n in (1, 2)}
        log.info("%s: mean reward %.3f, KL to the SFT model %.4f per token", name, rewards[name].mean(),
                 result["kl_to_reference"][name]["mean"])
    sft, policy = label["dp_sft"], label["dp_ppo"]
    result["reward_diff"] = {f"{policy}-{sft}": bootstrap_mean(rewards[policy] - rewards[sft], draws=draws, seed=seed),
                             f"{sft}-base": bootstrap_mean(rewards[sft] - rewards["base"], draws=draws, seed=seed)}
    privacy = json.loads(open("metrics/privacy.json").read())["datasets"]["imdb"]
    result["epsilon"], result["delta"] = privacy["epsilon"], privacy["delta"]
    out.write_json(result, METRICS)
    rows = [{"model": n, **result["mean_reward"][n]} for n in rewards]
    out.write_csv(pd.DataFrame(rows)[["model", "mean", "lo", "hi"]].round(5), PLOT)
    return result


def main() -> None:
    with run_stage(STAGE) as out:
        evaluate_rl(P.load(), out)


if __name__ == "__main__":
    main()
