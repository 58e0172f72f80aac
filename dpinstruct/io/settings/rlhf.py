"""``rlhf``: a DP reward model from human preferences and RLHF on the release (Wu et al. task (ii),
Yu et al. section 5). ``sampling_rate`` and ``steps`` of the reward model are checked by the
accountant; ``rlhf.privacy`` is a ``Budget``."""
from typing import Annotated

from pydantic import Field

from dpinstruct.io.settings.base import NAME, OPTIONAL_TEXT, PATH, Float, Int, Params, Section, one_of
from dpinstruct.io.settings.privacy import Budget
from dpinstruct.io.settings.rl import PPO


class RlhfData(Section):
    KEY = "rlhf.data"
    private_path: PATH               # PRIVATE: human preference comparisons
    heldout_share: Float(gt=0, lt=1) # kept out of every reward model but gold
    partition_seed: Int(ge=0)


class Features(Section):
    KEY = "rlhf.features"
    backbone: one_of("embedder", "generator")
    max_seq_length: Int(ge=1)
    batch_size: Int(ge=1)


class DpRewardModel(Section):
    KEY = "rlhf.dp_reward_model"
    sampling_rate: Float()
    steps: Int(ge=None)
    clip_norm: Float(gt=0)
    lr: Float(gt=0)
    checkpoint_every: Int(ge=1)
    seed: Int(ge=0)


class RlhfPpo(PPO):
    KEY = "rlhf.rlhf_ppo"
    sources: Annotated[list[NAME], Field(min_length=1)]   # prompt sets: release, real, flan
    steps: Int(ge=1)
    prompts_per_step: Int(ge=1)
    max_prompt_tokens: Int(ge=1)     # longer chat prompts are skipped
    system_prompt: OPTIONAL_TEXT = None


class EvaluateRlhf(Section):
    KEY = "rlhf.evaluate_rlhf"
    rows: Int(ge=1)
    bootstrap: Int(ge=1)
    seed: Int(ge=0)


class Rlhf(Params):
    privacy: Budget
    data: RlhfData
    features: Features
    dp_reward_model: DpRewardModel
    rlhf_ppo: RlhfPpo
    evaluate_rlhf: EvaluateRlhf
