"""Stage `evaluate_rlhf`: how good each RLHF policy's answers to held-out REAL instructions are.

For the base generator and the policy of each prompt source (``rlhf_ppo@release``, ``@real``,
``@flan``): one answer to each of the first ``rows`` instructions of the private test split
(chat-formatted as in training; each prompt's uniforms seeded by its id, the same for every policy,
so paired differences see the policies, not the draws). The gold reward model (non-private, on all
comparisons: evaluation only) scores every answer; reported per source: mean gold reward with a
bootstrap interval, the paired difference to the base and the win rate against the base's answer
to the same instruction (ties count half), with intervals. Also the pairwise accuracy on the
held-out comparisons of the DP reward model, the non-private reference (same recipe, no DP) and the
gold model (which trained on them: an in-sample figure, for scale only), and the hh_rlhf epsilon.
Writes metrics/rlhf.json and plots/rlhf/gold_reward.csv; class private (test instructions, held-out
pairs).
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dpinstruct.alignment.scoring import bootstrap_mean
from dpinstruct.io import params as P
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.rlhf import EvaluateRlhf, RlhfPpo
from dpinstruct.models.loading import GENERATOR_DIR, load_generator
from dpinstruct.rl import ppo, rlhf
from dpinstruct.rl.preference_reward import PreferenceReward, accuracy

log = logging.getLogger("stages.evaluate_rlhf")
STAGE = "evaluate_rlhf"
TEST, FEATURES = "data/prepared/test.parquet", "data/rlhf/features.parquet"
REWARD_MODELS = {"dp_reward_model": "data/models/dp_reward_model", "reward_model": "data/models/reward_reference",
                 "gold_reward_model": "data/models/gold_reward"}
ADAPTERS = "data/adapters/rlhf"
PRIVACY = "metrics/privacy.json"
METRICS, PLOT = "metrics/rlhf.json", "plots/rlhf/gold_reward.csv"


def accuracies(draws: int, seed: int) -> dict:
    """Pairwise accuracy of each reward model on the held-out comparisons, with an interval."""
    heldout = pd.read_parquet(FEATURES)
    heldout = heldout[heldout.partition == "heldout"]
    chosen, rejected = np.stack(heldout.chosen.to_numpy()), np.stack(heldout.rejected.to_numpy())
    result = {}
    for name, folder in REWARD_MODELS.items():
        weight = PreferenceReward.load(folder).weight
        margin = (chosen - rejected) @ weight
        result[name] = {"accuracy": accuracy(weight, chosen, rejected),
                        "interval": bootstrap_mean((margin > 0) + 0.5 * (margin == 0), draws=draws, seed=seed)}
    result["gold_reward_model"]["note"] = "in-sample: the gold model trained on these comparisons"
    return result


def evaluate_rlhf(params: dict, out) -> dict:
    from peft import PeftModel

    cfg, train = EvaluateRlhf.from_params(params), RlhfPpo.from_params(params)
    draws, seed = cfg.bootstrap, cfg.seed
    s = rlhf.settings(train)
    s = ppo.PPOSettings(1, s.new_tokens, s.temperature, s.top_p, 0.0, s.clip_range)
    test = pd.read_parquet(TEST, columns=["id", "instruction"]).sort_values("id")
    base, tokenizer = load_generator(GENERATOR_DIR)
    ids, keep = rlhf.chat_prompts(tokenizer, test.instruction.tolist(), train.system_prompt, train.max_prompt_tokens)
    test, ids = test[keep].head(cfg.rows), [p for p, k in zip(ids, keep) if k][:cfg.rows]
    gold = PreferenceReward.load(REWARD_MODELS["gold_reward_model"])
    def generators():  # every policy answers an instruction with the same uniforms
        return ppo.rollout_seeds(ppo.public_seed(seed), test.id.tolist(), 1)

    scores, lengths = {}, {}
    for name in ["base", *train.sources]:
        model = base if name == "base" else PeftModel.from_pretrained(copy.deepcopy(base), f"{ADAPTERS}/{name}").merge_and_unload()
        r = ppo.rollouts(model, ids, s, generators(), eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
        scores[name] = gold.scores(test.instruction.tolist(), tokenizer.batch_decode(r.responses, skip_special_tokens=True))
        lengths[name] = float(r.response_mask.sum(1).mean())
        log.info("%s: mean gold reward %.4f, %.1f answer tokens", name, scores[name].mean(), lengths[name])
    result = {"rows": len(test), "reward": "gold Bradley-Terry reward model (non-private, all comparisons)",
              "gold_reward": {}, "answer_tokens": lengths, **accuracies(draws, seed)}
    for name, values in scores.items():
        entry = bootstrap_mean(values, draws=draws, seed=seed)
        if name != "base":
            diff = values - scores["base"]
            entry["minus_base"] = bootstrap_mean(diff, draws=draws, seed=seed)
            entry["win_rate_vs_base"] = bootstrap_mean((diff > 0) + 0.5 * (diff == 0), draws=draws, seed=seed)
        result["gold_reward"][name] = entry
    privacy = json.loads(Path(PRIVACY).read_text())["datasets"]
    result["epsilon"] = {d: {"epsilon": privacy[d]["epsilon"], "delta": privacy[d]["delta"]}
                         for d in ("hh_rlhf", "instructions")}
    out.write_json(result, METRICS)
    rows = [{"policy": n, **{k: result["gold_reward"][n][k] for k in ("mean", "lo", "hi")}} for n in scores]
    out.write_csv(pd.DataFrame(rows).round(5), PLOT)
    return result


def main() -> None:
    with run_stage(STAGE) as out:
        evaluate_rlhf(P.load(), out)


if __name__ == "__main__":
    main()
