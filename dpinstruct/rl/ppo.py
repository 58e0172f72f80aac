"""DP-PPO (Wu et al., ICLR 2024) for a LoRA policy: rollouts, shaped rewards, the clipped surrogate.

One step, for the prompts Poisson-sampled that step (each a private review's opening):
  1. ``rollouts``: k continuations of ``new_tokens`` tokens per prompt from the current policy (the
     batched sampler; fixed length, no early stop, so every row has the same shape). Each rollout
     draws from its own generator, seeded from (secret key, step, the prompt's id, rollout number)
     (``rollout_seeds``): a prompt's continuations, hence its gradient, are a function of that
     prompt and the current policy alone, never of which other prompts share the batch. That is
     what bounds the step's sensitivity by C when one prompt is added or removed. The only residue
     is float rounding: batched kernels round differently at different batch sizes, so in rare
     cases a near-tie token can differ (the same class of caveat as floating-point attacks on the
     Gaussian mechanism, which every batched DP-SGD implementation shares);
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

The adapter sits on the top layers only, so the layers below it are run once per batch
(dpinstruct/models/trunk.py) and the old, reference and training log-probabilities each run only
the adapted layers and the head.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from dpinstruct.io.errors import ConfigError
from dpinstruct.io.params import as_float
from dpinstruct.models.sampler import RowGenerators
from dpinstruct.models.token_logprob import target_logprobs
from dpinstruct.models.trunk import TrunkRecorder, decoder, output_head, top_hidden, trunk


@dataclass(frozen=True)
class PPOSettings:
    rollouts: int          # continuations per prompt (k)
    new_tokens: int        # tokens per continuation
    temperature: float
    top_p: float
    kl_coef: float         # beta of the KL penalty to the reference
    clip_range: float      # PPO's epsilon

    @classmethod
    def from_params(cls, cfg: dict, section: str) -> "PPOSettings":
        """From a params section (``rl.dp_ppo``, ``rlhf.rlhf_ppo``), refusing values the step cannot use."""
        s = cls(rollouts=int(cfg["rollouts"]), new_tokens=int(cfg["new_tokens"]),
                temperature=as_float(cfg["temperature"]), top_p=as_float(cfg["top_p"]),
                kl_coef=as_float(cfg["kl_coef"]), clip_range=as_float(cfg["clip_range"]))
        if s.rollouts < 2 or s.new_tokens < 1 or not s.temperature > 0 or s.kl_coef < 0 or not s.clip_range > 0:
            raise ConfigError(section, "need rollouts >= 2 (the baseline is their mean), new_tokens >= 1, "
                                       f"temperature > 0, kl_coef >= 0, clip_range > 0; got {s}")
        return s


def causal_lm(model):
    """The transformers causal LM inside a (possibly peft-wrapped) model: what the samplers drive."""
    inner = model.base_model.model if hasattr(model, "base_model") and hasattr(model.base_model, "model") else model
    return inner


def rollout_seeds(seed_of, keys: list[str], k: int) -> RowGenerators:
    """One generator per rollout, in ``rollouts``' row order: rollout j of the prompt named by
    ``keys[i]`` is seeded by ``seed_of(keys[i], j)`` and nothing else."""
    return RowGenerators.from_seeds(seed_of(key, j) for key in keys for j in range(k))


def public_seed(seed: int):
    """``seed_of`` for public prompts (evaluation): a hash of (seed, prompt id, rollout), so every
    policy continues a prompt with the same uniforms (common random numbers: tighter paired
    differences)."""
    def seed_of(key: str, j: int) -> int:
        return int.from_bytes(hashlib.sha256(f"{seed}/{key}/{j}".encode()).digest()[:8], "big") >> 1
    return seed_of


def rollouts(model, prompts: list[list[int]], settings: PPOSettings, generator: RowGenerators) -> torch.Tensor:
    """[prompts * k, prompt + new_tokens] token ids: k continuations of each prompt, in prompt order,
    row r drawing from ``generator``'s r-th generator (``rollout_seeds``). Every prompt has the
    same length (a fixed number of tokens), so no row is padded."""
    from dpinstruct.models.batch_sampler import sample_prompts

    repeated = [p for p in prompts for _ in range(settings.rollouts)]
    with torch.inference_mode():
        new = sample_prompts(causal_lm(model), repeated, eos_id=-1, pad_id=0, max_new_tokens=settings.new_tokens,
                             top_p=settings.top_p, temperature=settings.temperature, generator=generator)
    # built outside inference mode: the ids feed the policy's backward pass later
    return torch.tensor([p + n for p, n in zip(repeated, new)])


def rollouts_and_trunk(model, prompts: list[list[int]], settings: PPOSettings, generator: RowGenerators,
                       start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rollouts`` and their trunk (``trunk_states``), recorded while decoding: the sampler has
    already computed the hidden states entering layer ``start`` at every position but the last, so
    the policy, reference and training passes need not run the lower layers again."""
    with TrunkRecorder(model, start) as recorder:
        ids = rollouts(model, prompts, settings, generator)
        hidden = recorder.sequence(len(ids)).clone()  # a normal tensor: it feeds the backward pass
    return ids, hidden


def _continuation_logprobs(model, final: torch.Tensor, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """[rows, new_tokens] from the final hidden states of positions 0..len-2 (the last token
    predicts nothing): position t predicts token t + 1."""
    return target_logprobs(final[:, prompt_len - 1:], output_head(model), ids[:, prompt_len:])


def token_logprobs(model, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """[rows, new_tokens] log-probabilities of the continuation tokens under ``model`` (all layers)."""
    return _continuation_logprobs(model, decoder(model)(input_ids=ids[:, :-1]).last_hidden_state, ids, prompt_len)


def top_logprobs(model, hidden: torch.Tensor, ids: torch.Tensor, prompt_len: int, start: int) -> torch.Tensor:
    """``token_logprobs`` from the trunk's hidden states (layers ``start``.. and the head only)."""
    return _continuation_logprobs(model, top_hidden(model, hidden, start), ids, prompt_len)


def advantages(rewards: np.ndarray, kl: np.ndarray, k: int, kl_coef: float) -> np.ndarray:
    """[rows] shaped reward minus the mean shaped reward of the same prompt's k rollouts (rows are
    grouped by prompt, k at a time)."""
    shaped = (rewards - kl_coef * kl).reshape(-1, k)
    return (shaped - shaped.mean(axis=1, keepdims=True)).reshape(-1)


def ppo_loss(clip_range: float, prompt_len: int, start: int):
    """``loss_fn(model, batch) -> [rows]`` for DPAdam: the clipped surrogate per rollout; the batch
    carries the trunk's hidden states (``hidden``), the adapter starting at layer ``start``."""

    def loss_fn(model, batch: dict) -> torch.Tensor:
        logp = top_logprobs(model, batch["hidden"], batch["input_ids"], prompt_len, start)
        ratio = torch.exp(logp - batch["old_logp"])
        adv = batch["advantage"][:, None]
        surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv)
        return -surrogate.mean(dim=1)

    return loss_fn


def micro_batches(ids: torch.Tensor, hidden: torch.Tensor, old_logp: torch.Tensor, adv: np.ndarray, k: int,
                  per_micro: int) -> list[dict]:
    """Whole prompts per micro-batch (a prompt's k rollouts never straddle two)."""
    rows = per_micro * k
    return [{"input_ids": ids[i:i + rows], "hidden": hidden[i:i + rows], "old_logp": old_logp[i:i + rows],
             "advantage": torch.tensor(adv[i:i + rows], dtype=torch.float32),
             "unit": torch.arange(i // k, (i + len(ids[i:i + rows])) // k).repeat_interleave(k)}
            for i in range(0, len(ids), rows)]


def kl_to_reference(old_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """[rows] the sampled estimate sum_t (log pi - log pi_ref) of KL(pi || pi_ref) on each rollout."""
    return (old_logp - ref_logp).sum(dim=1)


def policy_logprobs(model, ids: torch.Tensor, prompt_len: int, batch_size: int = 32) -> torch.Tensor:
    """[rows, new_tokens] under ``model`` by full forwards (evaluation)."""
    with torch.no_grad():
        return torch.cat([token_logprobs(model, ids[i:i + batch_size], prompt_len)
                          for i in range(0, len(ids), batch_size)])


def old_and_reference_logprobs(policy, hidden: torch.Tensor, ids: torch.Tensor, prompt_len: int, start: int,
                               batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, new_tokens] twice, from the trunk's hidden states (``trunk_states``): under the peft
    policy, and under the reference (the same policy with its adapter disabled)."""
    def run() -> torch.Tensor:
        return torch.cat([top_logprobs(policy, hidden[i:i + batch_size], ids[i:i + batch_size], prompt_len, start)
                          for i in range(0, len(ids), batch_size)])

    with torch.no_grad():
        old = run()
        with policy.disable_adapter():
            return old, run()


def trunk_states(policy, ids: torch.Tensor, start: int) -> torch.Tensor:
    """[rows, len - 1, d] the hidden states entering the first adapted layer at every position but
    the last, shared by policy, reference and training (the layers below ``start`` carry no adapter)."""
    return trunk(policy, ids[:, :-1], start)


def distinct_n(sequences: list[list[int]], n: int) -> float:
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
