"""DP-PPO (Wu et al., ICLR 2024) for a LoRA policy: rollouts, shaped rewards, the clipped surrogate.

One step, for the prompts Poisson-sampled that step (each a private review's opening):
  1. ``rollouts``: k continuations of ``new_tokens`` tokens per prompt from the current policy (the
     batched sampler; fixed length, no early stop, so every row has the same shape);
  2. rewards (the sentiment logit of each continuation) shaped with a KL penalty to the frozen
     reference (the DP-SFT model, i.e. the policy with its PPO adapter disabled):
     R = r - kl_coef * sum_t (log pi_old - log pi_ref);
  3. ``advantages``: R minus the mean R of the SAME prompt's k rollouts. This group baseline
     replaces a value head: it reads nothing but that prompt's own rollouts, so it is part of the
     prompt's clipped contribution and needs no privacy budget of its own (a value head or a
     reward normaliser shared across prompts would have to be trained under the mechanism too);
  4. ``ppo_loss``: the clipped surrogate -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) averaged
     over tokens; DPAdam averages a prompt's rollouts into ONE gradient (``unit``), clips it to C
     and adds the noise once for the step.
With one PPO epoch per sampled batch (the default, what keeps subsampling amplification exact)
the ratio is 1 at the single gradient step; ``epochs_per_batch`` > 1 reuses the batch and is
accounted as that many Gaussian steps on the same Poisson sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PPOSettings:
    rollouts: int          # continuations per prompt (k)
    new_tokens: int        # tokens per continuation
    temperature: float
    top_p: float
    kl_coef: float         # beta of the KL penalty to the reference
    clip_range: float      # PPO's epsilon


class TorchGeneratorStream:
    """A torch.Generator behind the state()/restore() interface of checkpoints (public rollout
    randomness: it drives sampling, not a DP mechanism)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def state(self):
        return self.generator.get_state()

    def restore(self, state) -> None:
        if state is not None:
            self.generator.set_state(state)


def causal_lm(model):
    """The transformers causal LM inside a (possibly peft-wrapped) model: what the samplers drive."""
    inner = model.base_model.model if hasattr(model, "base_model") and hasattr(model.base_model, "model") else model
    return inner


def rollouts(model, prompts: list[list[int]], settings: PPOSettings, generator: torch.Generator) -> torch.Tensor:
    """[prompts * k, prompt + new_tokens] token ids: k continuations of each prompt, in prompt order.
    Every prompt has the same length (a fixed number of tokens), so no row is padded."""
    from dpinstruct.models.batch_sampler import sample_prompts

    repeated = [p for p in prompts for _ in range(settings.rollouts)]
    with torch.inference_mode():
        new = sample_prompts(causal_lm(model), repeated, eos_id=-1, pad_id=0, max_new_tokens=settings.new_tokens,
                             top_p=settings.top_p, temperature=settings.temperature, generator=generator)
    # built outside inference mode: the ids feed the policy's backward pass later
    return torch.tensor([p + n for p, n in zip(repeated, new)])


def token_logprobs(model, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """[rows, new_tokens] log-probabilities of the continuation tokens under ``model``."""
    logits = model(input_ids=ids).logits[:, prompt_len - 1:-1].float()
    return torch.log_softmax(logits, dim=-1).gather(2, ids[:, prompt_len:, None]).squeeze(2)


def advantages(rewards: np.ndarray, kl: np.ndarray, k: int, kl_coef: float) -> np.ndarray:
    """[rows] shaped reward minus the mean shaped reward of the same prompt's k rollouts (rows are
    grouped by prompt, k at a time)."""
    shaped = (rewards - kl_coef * kl).reshape(-1, k)
    return (shaped - shaped.mean(axis=1, keepdims=True)).reshape(-1)


def ppo_loss(clip_range: float, prompt_len: int):
    """``loss_fn(model, batch) -> [rows]`` for DPAdam: the clipped surrogate per rollout."""

    def loss_fn(model, batch: dict) -> torch.Tensor:
        logp = token_logprobs(model, batch["input_ids"], prompt_len)
        ratio = torch.exp(logp - batch["old_logp"])
        adv = batch["advantage"][:, None]
        surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv)
        return -surrogate.mean(dim=1)

    return loss_fn


def kl_to_reference(old_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """[rows] the sampled estimate sum_t (log pi - log pi_ref) of KL(pi || pi_ref) on each rollout."""
    return (old_logp - ref_logp).sum(dim=1)


def reference_logprobs(model, ids: torch.Tensor, prompt_len: int, batch_size: int = 32) -> torch.Tensor:
    """Log-probabilities under the reference: the peft policy with its adapter disabled."""
    with torch.no_grad(), model.disable_adapter():
        return torch.cat([token_logprobs(model, ids[i:i + batch_size], prompt_len)
                          for i in range(0, len(ids), batch_size)])


def policy_logprobs(model, ids: torch.Tensor, prompt_len: int, batch_size: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([token_logprobs(model, ids[i:i + batch_size], prompt_len)
                          for i in range(0, len(ids), batch_size)])


def distinct_n(sequences: list[list[int]], n: int) -> float:
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
