"""RLHF on instructions (Yu et al. 2024, section 5; Wu et al. 2024, task (ii)): PPO with chat prompts.

The step is the PPO core's (``ppo``: k rollouts per prompt, the reward shaped by a KL penalty to
the frozen reference, here the base model, i.e. the policy with its adapter disabled, each
prompt's own mean as its baseline, the clipped surrogate). What is this task's own:

* the prompts: chat-formatted instructions (``chat_prompts``) of different lengths, so the
  rollouts are left-padded, and an answer ends at EOS (``ppo.rollouts`` with ``eos_id``: its
  ``response_mask`` covers the answer's tokens up to and including EOS; nothing after it is scored
  or trained);
* the reward: a preference reward model of (instruction, answer) (``preference_reward``);
* the update is NOT a DP mechanism: the prompts are a DP release (post-processing of DP outputs),
  the public FLAN set, or, for the non-private reference run, the private train split (its outputs
  are then private), and the reward model is a DP output. So the step is a plain Adam step on the
  mean surrogate (``ppo.train_step``), with no per-prompt clipping or noise, and the randomness is
  seeded.
"""
from __future__ import annotations

from dpinstruct.io.settings.rlhf import RlhfPpo
from dpinstruct.rl.ppo import PPOSettings


def settings(cfg: RlhfPpo) -> PPOSettings:
    return PPOSettings.from_params(cfg)


def chat_prompts(tokenizer, instructions: list[str], system_prompt: str | None,
                 max_tokens: int) -> tuple[list[list[int]], list[bool]]:
    """Chat-template token ids of each instruction (after the system prompt, if any, and ending with
    the assistant's turn marker), and whether it fits ``max_tokens``: a rule on each alone."""
    from dpinstruct.alignment.chat import chat_ids, user

    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    ids = [chat_ids(tokenizer, system + user(text), generation_prompt=True) for text in instructions]
    return ids, [len(p) <= max_tokens for p in ids]
