"""RLHF on instructions (Yu et al. 2024, section 5; Wu et al. 2024, task (ii)): PPO with chat prompts.

The step is DP-PPO's (``ppo``): k rollouts per prompt, the reward shaped by a KL penalty to the
frozen reference (the base model: the policy with its adapter disabled), each prompt's own mean as
its baseline, the clipped surrogate. What differs:

* prompts are chat-formatted instructions of different lengths, so the batch is left-padded
  (attention mask, per-row positions: ``ChatRollouts``) and an answer ends at EOS (``response_mask``
  covers its tokens up to and including EOS; nothing after it is scored or trained);
* the reward is a preference reward model of (instruction, answer) (``preference_reward``);
* the update is NOT a DP mechanism: the prompts are a DP release (post-processing of DP outputs),
  the public FLAN set, or, for the non-private reference run, the private train split (its outputs
  are then private), and the reward model is a DP output. So the step is a plain Adam step on the
  mean surrogate, with no per-prompt clipping or noise, and the randomness is seeded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dpinstruct.models.sampler import RowGenerators
from dpinstruct.models.token_logprob import target_logprobs
from dpinstruct.models.trunk import output_head, top_hidden, trunk
from dpinstruct.rl.ppo import PPOSettings, causal_lm


def settings(cfg: dict, section: str = "rlhf.rlhf_ppo") -> PPOSettings:
    return PPOSettings.from_params(cfg, section)


def chat_prompts(tokenizer, instructions: list[str], system_prompt: str | None,
                 max_tokens: int) -> tuple[list[list[int]], list[bool]]:
    """Chat-template token ids of each instruction (after the system prompt, if any, and ending with
    the assistant's turn marker), and whether it fits ``max_tokens``: a rule on each alone."""
    from dpinstruct.alignment.chat import chat_ids, user

    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    ids = [chat_ids(tokenizer, system + user(text), generation_prompt=True) for text in instructions]
    return ids, [len(p) <= max_tokens for p in ids]


@dataclass
class ChatRollouts:
    ids: torch.Tensor            # [rows, width + new_tokens]: left-padded prompt, then the answer, right-padded
    mask: torch.Tensor           # [rows, width + new_tokens]: 1 on real tokens
    width: int                   # prompt columns: answers start here
    response_mask: torch.Tensor  # [rows, new_tokens] float: 1 on the answer's tokens (EOS included)
    responses: list[list[int]]   # each answer's token ids

    def rows(self, start: int, stop: int) -> ChatRollouts:
        return ChatRollouts(self.ids[start:stop], self.mask[start:stop], self.width,
                            self.response_mask[start:stop], self.responses[start:stop])

    def inputs(self) -> dict:
        """The model inputs predicting every answer token: all positions but the last, their mask
        and per-row positions (each row counts its own tokens, so left padding changes nothing but
        float rounding)."""
        mask = self.mask[:, :-1]
        return {"input_ids": self.ids[:, :-1], "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp_min(0)}


def chat_rollouts(model, prompts: list[list[int]], settings: PPOSettings, generator: RowGenerators, *, eos_id: int,
                  pad_id: int) -> ChatRollouts:
    """k answers to each prompt (rows grouped by prompt, k at a time), row r drawn from the r-th
    generator of ``generator``, each ending at EOS or after ``new_tokens``."""
    from dpinstruct.models.batch_sampler import sample_prompts

    repeated = [p for p in prompts for _ in range(settings.rollouts)]
    with torch.inference_mode():
        answers = sample_prompts(causal_lm(model), repeated, eos_id=eos_id, pad_id=pad_id,
                                 max_new_tokens=settings.new_tokens, top_p=settings.top_p,
                                 temperature=settings.temperature, generator=generator)
    width, new = max(len(p) for p in repeated), settings.new_tokens
    ids = torch.full((len(repeated), width + new), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    response_mask = torch.zeros((len(repeated), new))
    for row, (p, a) in enumerate(zip(repeated, answers)):
        ids[row, width - len(p):width] = torch.tensor(p)
        ids[row, width:width + len(a)] = torch.tensor(a, dtype=torch.long)
        mask[row, width - len(p):width + len(a)] = 1
        response_mask[row, :len(a)] = 1
    return ChatRollouts(ids, mask, width, response_mask, answers)


def trunk_states(model, r: ChatRollouts, start: int) -> torch.Tensor:
    """[rows, len - 1, d] the hidden states entering the first adapted layer ``start``, shared by
    the policy, the reference and the training pass (no adapter below it)."""
    x = r.inputs()
    return trunk(model, x["input_ids"], start, attention_mask=x["attention_mask"], position_ids=x["position_ids"])


def response_logprobs(model, r: ChatRollouts, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """[rows, new_tokens] log-probability of each answer token under ``model`` (0 after the answer),
    from the trunk's ``hidden`` through layers ``start``.. and the head."""
    x = r.inputs()
    final = top_hidden(model, hidden, start, attention_mask=x["attention_mask"], position_ids=x["position_ids"])
    logp = target_logprobs(final[:, r.width - 1:], output_head(model), r.ids[:, r.width:])
    return torch.where(r.response_mask.bool(), logp, torch.zeros_like(logp))


def logprobs_in_batches(model, r: ChatRollouts, hidden: torch.Tensor, start: int, batch_size: int = 16) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([response_logprobs(model, r.rows(i, i + batch_size), hidden[i:i + batch_size], start)
                          for i in range(0, len(r.ids), batch_size)])


def kl_to_reference(old_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """[rows] sum over each answer's tokens of log pi - log pi_ref (both are 0 after the answer)."""
    return (old_logp - ref_logp).sum(dim=1)


def surrogate_loss(model, r: ChatRollouts, hidden: torch.Tensor, start: int, old_logp: torch.Tensor,
                   advantage: torch.Tensor, clip_range: float) -> torch.Tensor:
    """[rows] PPO's clipped surrogate, negated, averaged over each answer's tokens."""
    logp = response_logprobs(model, r, hidden, start)
    ratio = torch.exp(logp - old_logp)
    adv = advantage[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv)
    return -(surrogate * r.response_mask).sum(1) / r.response_mask.sum(1).clamp_min(1)


def train_step(model, optimizer, r: ChatRollouts, hidden: torch.Tensor, start: int, old_logp: torch.Tensor,
               advantage: np.ndarray, clip_range: float, batch_size: int = 16) -> float:
    """One Adam step on the mean surrogate over all rows (gradients accumulated in micro-batches)."""
    model.train()
    optimizer.zero_grad()
    adv, total = torch.tensor(advantage, dtype=torch.float32), 0.0
    for i in range(0, len(r.ids), batch_size):
        loss = surrogate_loss(model, r.rows(i, i + batch_size), hidden[i:i + batch_size], start,
                              old_logp[i:i + batch_size], adv[i:i + batch_size], clip_range).sum() / len(r.ids)
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    model.eval()
    return total
