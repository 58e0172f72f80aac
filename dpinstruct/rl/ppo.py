"""PPO for a LoRA policy, the one core of both RL tasks: rollouts, log-probabilities, the KL
penalty, the group baseline, the clipped surrogate and the two update drivers.

What each task adds is small and lives apart: its prompts and its reward.
* DP-PPO (Wu et al., ICLR 2024, task (i), stage ``dp_ppo``): private IMDb review openings of a
  fixed number of tokens (``data``), continued for ``new_tokens`` tokens, rewarded by the public
  sentiment classifier (``reward``); the update is DP-Adam's (``micro_batches``: one prompt is ONE
  clipped example);
* RLHF on instructions (``rlhf``, stage ``rlhf_ppo``): chat prompts of different lengths whose
  answers end at EOS, rewarded by the DP preference reward model (``preference_reward``); the
  update is a plain Adam step (``train_step``: its inputs are DP outputs or public, no mechanism).

One step, for the prompts of that step:
  1. ``rollouts``: k continuations of each prompt from the current policy (the one decoder,
     dpinstruct/models/sampler.py). Each rollout draws from its own generator, seeded from (secret
     key, step, the prompt's id, rollout number) for DP-PPO or from a public seed
     (``rollout_seeds``): a prompt's continuations, hence its gradient, are a function of that
     prompt and the current policy alone, never of which other prompts share the batch. That is
     what bounds DP-PPO's sensitivity by C when one prompt is added or removed. The only residue
     is float rounding: batched kernels round differently at different batch sizes, so in rare
     cases a near-tie token can differ (the same class of caveat as floating-point attacks on the
     Gaussian mechanism, which every batched DP-SGD implementation shares). Fixed-length
     continuations of prompts of one length (DP-PPO) are unpadded: no attention mask anywhere.
     Otherwise prompts are left-padded and continuations that end at EOS right-padded
     (``Rollouts.mask``, ``Rollouts.response_mask``): each row counts its own positions, and
     nothing after a continuation's EOS is scored or trained;
  2. rewards (the task's) shaped with a KL penalty to the frozen reference (the policy with its
     adapter disabled: the DP-SFT model, or the base for RLHF):
     R = r - kl_coef * sum_t (log pi_old - log pi_ref);
  3. ``advantages``: R minus the mean R of the SAME prompt's k rollouts. This group baseline
     replaces a value head: it reads nothing but that prompt's own rollouts, so it is part of the
     prompt's clipped contribution and needs no privacy budget of its own (a value head or a
     reward normaliser shared across prompts would have to be trained under the mechanism too);
  4. ``ppo_loss``: the clipped surrogate -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) averaged
     over each continuation's tokens (``clipped_surrogate``), for either driver: DPAdam averages a
     prompt's rollouts into ONE gradient (``unit``), clips it to C and adds the noise once for the
     step; ``train_step`` takes a plain Adam step on the mean.
With one PPO epoch per sampled batch (the default, what keeps subsampling amplification exact)
the ratio is 1 at the single gradient step; ``epochs_per_batch`` > 1 reuses the batch and is
accounted as that many Gaussian steps on the same Poisson sample.

The adapter sits on the top layers only, so the layers below it are run once per batch
(dpinstruct/models/trunk.py: recorded while decoding for unpadded rollouts, ``rollouts_and_trunk``,
else ``trunk_states``) and the old, reference and training log-probabilities each run only the
adapted layers and the head.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from dpinstruct.io.settings.rl import PPO
from dpinstruct.models.sampler import RowGenerators, sample
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
    def from_params(cls, cfg: PPO) -> "PPOSettings":
        """From a typed PPO section (``rl.dp_ppo``, ``rlhf.rlhf_ppo``), whose reading refused the values
        the step cannot use (rollouts >= 2: the baseline is their mean; dpinstruct/io/settings/rl.py)."""
        return cls(rollouts=cfg.rollouts, new_tokens=cfg.new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                   kl_coef=cfg.kl_coef, clip_range=cfg.clip_range)


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


@dataclass
class Rollouts:
    """k continuations of each prompt of a step, rows grouped by prompt, k at a time."""
    ids: torch.Tensor            # [rows, width + new_tokens]: prompt (left-padded), then continuation (right-padded)
    width: int                   # prompt columns: continuations start here
    mask: torch.Tensor | None    # [rows, width + new_tokens]: 1 on real tokens; None when no row is padded
    response_mask: torch.Tensor  # [rows, new_tokens] float: 1 on each continuation's tokens (EOS included)
    responses: list[list[int]]   # each continuation's token ids

    @property
    def masks(self) -> dict:
        """The padding keywords of the log-probability and batch functions: none when unpadded."""
        return {} if self.mask is None else {"attention_mask": self.mask, "response_mask": self.response_mask}


def rollouts(model, prompts: list[list[int]], settings: PPOSettings, generator: RowGenerators, *,
             eos_id: int | None = None, pad_id: int = 0) -> Rollouts:
    """k continuations of each prompt (rows grouped by prompt, k at a time), row r drawing from
    ``generator``'s r-th generator (``rollout_seeds``); each of ``new_tokens`` tokens or, with
    ``eos_id``, ending at EOS. Prompts of one length without ``eos_id`` give unpadded rows (``mask``
    None: DP-PPO's fixed-length rollouts); otherwise prompts are left-padded with ``pad_id`` and
    continuations right-padded."""
    with torch.inference_mode():
        answers = sample(causal_lm(model), prompts, settings.rollouts, eos_id=-1 if eos_id is None else eos_id,
                         pad_id=pad_id, max_new_tokens=settings.new_tokens, top_p=settings.top_p,
                         temperature=settings.temperature, generator=generator)
    # built outside inference mode: the ids feed the policy's backward pass later
    repeated = [p for p in prompts for _ in range(settings.rollouts)]
    width, new = max(len(p) for p in repeated), settings.new_tokens
    ids = torch.full((len(repeated), width + new), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    response_mask = torch.zeros((len(repeated), new))
    for row, (p, a) in enumerate(zip(repeated, answers)):
        ids[row, width - len(p):width] = torch.tensor(p)
        ids[row, width:width + len(a)] = torch.tensor(a, dtype=torch.long)
        mask[row, width - len(p):width + len(a)] = 1
        response_mask[row, :len(a)] = 1
    unpadded = eos_id is None and all(len(p) == width for p in repeated)
    return Rollouts(ids, width, None if unpadded else mask, response_mask, answers)


def rollouts_and_trunk(model, prompts: list[list[int]], settings: PPOSettings, generator: RowGenerators,
                       start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids of unpadded ``rollouts`` (prompts of one length, fixed-length continuations) and
    their trunk (``trunk_states``), recorded while decoding: the sampler has already computed the
    hidden states entering layer ``start`` at every position but the last, so the policy,
    reference and training passes need not run the lower layers again."""
    if len({len(p) for p in prompts}) > 1:
        raise ValueError("rollouts_and_trunk needs prompts of one length (its rows are unpadded); for padded "
                         "rollouts use rollouts and trunk_states with the rollouts' attention mask")
    with TrunkRecorder(model, start) as recorder:
        ids = rollouts(model, prompts, settings, generator).ids
        hidden = recorder.sequence(len(ids)).clone()  # a normal tensor: it feeds the backward pass
    return ids, hidden


def _inputs(ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """The inputs that predict every continuation token (all positions but the last) and, for
    padded rows, their attention mask and per-row positions (each row counts its own tokens, so
    left padding changes nothing but float rounding)."""
    if attention_mask is None:
        return ids[:, :-1], {}
    mask = attention_mask[:, :-1]
    return ids[:, :-1], {"attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp_min(0)}


def _continuation_logprobs(model, final: torch.Tensor, ids: torch.Tensor, prompt_len: int,
                           response_mask: torch.Tensor | None) -> torch.Tensor:
    """[rows, new_tokens] from the final hidden states of positions 0..len-2 (the last token
    predicts nothing): position t predicts token t + 1; 0 after a continuation's end."""
    logp = target_logprobs(final[:, prompt_len - 1:], output_head(model), ids[:, prompt_len:])
    return logp if response_mask is None else torch.where(response_mask.bool(), logp, torch.zeros_like(logp))


def token_logprobs(model, ids: torch.Tensor, prompt_len: int, *, attention_mask=None,
                   response_mask=None) -> torch.Tensor:
    """[rows, new_tokens] log-probabilities of the continuation tokens under ``model`` (all layers);
    ``prompt_len`` is the column where continuations start (``Rollouts.width``)."""
    x, extra = _inputs(ids, attention_mask)
    return _continuation_logprobs(model, decoder(model)(input_ids=x, **extra).last_hidden_state, ids, prompt_len,
                                  response_mask)


def top_logprobs(model, hidden: torch.Tensor, ids: torch.Tensor, prompt_len: int, start: int, *,
                 attention_mask=None, response_mask=None) -> torch.Tensor:
    """``token_logprobs`` from the trunk's hidden states (layers ``start``.. and the head only)."""
    _, extra = _inputs(ids, attention_mask)
    return _continuation_logprobs(model, top_hidden(model, hidden, start, **extra), ids, prompt_len, response_mask)


def trunk_states(policy, ids: torch.Tensor, start: int, *, attention_mask=None) -> torch.Tensor:
    """[rows, len - 1, d] the hidden states entering the first adapted layer at every position but
    the last, shared by policy, reference and training (the layers below ``start`` carry no adapter)."""
    x, extra = _inputs(ids, attention_mask)
    return trunk(policy, x, start, **extra)


def _masks(attention_mask, response_mask, i: int, j: int) -> dict:
    return {k: v[i:j] for k, v in (("attention_mask", attention_mask), ("response_mask", response_mask))
            if v is not None}


def policy_logprobs(model, ids: torch.Tensor, prompt_len: int, batch_size: int = 32, *, attention_mask=None,
                    response_mask=None) -> torch.Tensor:
    """[rows, new_tokens] under ``model`` by full forwards (evaluation)."""
    with torch.no_grad():
        return torch.cat([token_logprobs(model, ids[i:i + batch_size], prompt_len,
                                         **_masks(attention_mask, response_mask, i, i + batch_size))
                          for i in range(0, len(ids), batch_size)])


def old_and_reference_logprobs(policy, hidden: torch.Tensor, ids: torch.Tensor, prompt_len: int, start: int,
                               batch_size: int = 32, *, attention_mask=None,
                               response_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, new_tokens] twice, from the trunk's hidden states (``trunk_states``): under the peft
    policy, and under the reference (the same policy with its adapter disabled)."""
    def run() -> torch.Tensor:
        return torch.cat([top_logprobs(policy, hidden[i:i + batch_size], ids[i:i + batch_size], prompt_len, start,
                                       **_masks(attention_mask, response_mask, i, i + batch_size))
                          for i in range(0, len(ids), batch_size)])

    with torch.no_grad():
        old = run()
        with policy.disable_adapter():
            return old, run()


def kl_to_reference(old_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """[rows] the sampled estimate sum_t (log pi - log pi_ref) of KL(pi || pi_ref) on each rollout
    (both are 0 after a continuation's end)."""
    return (old_logp - ref_logp).sum(dim=1)


def advantages(rewards: np.ndarray, kl: np.ndarray, k: int, kl_coef: float) -> np.ndarray:
    """[rows] shaped reward minus the mean shaped reward of the same prompt's k rollouts (rows are
    grouped by prompt, k at a time)."""
    shaped = (rewards - kl_coef * kl).reshape(-1, k)
    return (shaped - shaped.mean(axis=1, keepdims=True)).reshape(-1)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor, clip_range: float,
                      response_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[rows] PPO's clipped surrogate, negated, averaged over each continuation's tokens (those
    under ``response_mask`` when rows are padded)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantage[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv)
    if response_mask is None:
        return -surrogate.mean(dim=1)
    return -(surrogate * response_mask).sum(1) / response_mask.sum(1).clamp_min(1)


def ppo_loss(clip_range: float, prompt_len: int, start: int):
    """``loss_fn(model, batch) -> [rows]``, the clipped surrogate per rollout, on a batch of
    ``micro_batches`` (DPAdam) or ``row_batches`` (``train_step``): it carries the trunk's hidden
    states (``hidden``), the adapter starting at layer ``start``, and for padded rows their
    ``attention_mask`` and ``response_mask``."""

    def loss_fn(model, batch: dict) -> torch.Tensor:
        masks = {k: batch[k] for k in ("attention_mask", "response_mask") if k in batch}
        logp = top_logprobs(model, batch["hidden"], batch["input_ids"], prompt_len, start, **masks)
        return clipped_surrogate(logp, batch["old_logp"], batch["advantage"], clip_range, masks.get("response_mask"))

    return loss_fn


def row_batches(ids: torch.Tensor, hidden: torch.Tensor, old_logp: torch.Tensor, adv: np.ndarray, rows: int, *,
                attention_mask=None, response_mask=None) -> list[dict]:
    """The training inputs of ``ppo_loss``, ``rows`` rows at a time."""
    return [{"input_ids": ids[i:i + rows], "hidden": hidden[i:i + rows], "old_logp": old_logp[i:i + rows],
             "advantage": torch.tensor(adv[i:i + rows], dtype=torch.float32),
             **_masks(attention_mask, response_mask, i, i + rows)}
            for i in range(0, len(ids), rows)]


def micro_batches(ids: torch.Tensor, hidden: torch.Tensor, old_logp: torch.Tensor, adv: np.ndarray, k: int,
                  per_micro: int, *, attention_mask=None, response_mask=None) -> list[dict]:
    """DPAdam's micro-batches: whole prompts per micro-batch (a prompt's k rollouts never straddle
    two), each row's ``unit`` its prompt (the privacy unit)."""
    rows = per_micro * k
    return [{**batch, "unit": torch.arange(i // k, (i + len(batch["input_ids"])) // k).repeat_interleave(k)}
            for i, batch in zip(range(0, len(ids), rows), row_batches(ids, hidden, old_logp, adv, rows,
                                                                      attention_mask=attention_mask,
                                                                      response_mask=response_mask))]


def train_step(model, optimizer, batches: list[dict], loss_fn) -> float:
    """One plain (non-private) optimizer step on the mean of ``loss_fn`` over every row of
    ``batches``, gradients accumulated batch by batch; returns that mean."""
    model.train()
    optimizer.zero_grad()
    rows, total = sum(len(b["input_ids"]) for b in batches), 0.0
    for batch in batches:
        loss = loss_fn(model, batch).sum() / rows
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    model.eval()
    return total


def distinct_n(sequences: list[list[int]], n: int) -> float:
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
