"""Algorithm 1's training loop: DP-LoRA fine-tuning of the generator on a list of instructions.

Shared by the stage `train_generator` and the privacy audit (``dpinstruct.privacy.audit``), which
trains the same way on the train split plus canaries. The privacy unit is the record, or the user
when ``units`` is given (``dpinstruct.privacy.user_level``). The plan (q, T, sigma) comes from
params alone; the DP count of the units (``dpinstruct.privacy.dp_count``) gives the divisor q x N~ and
serves the delta < 1/N~ refusal. The loss is
``instruction_loss`` (the fused head, and the backward pass stopping at the first adapted block).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dpinstruct.io import params as P
from dpinstruct.models.instruction_loss import instruction_loss
from dpinstruct.models.loading import GENERATOR_DIR
from dpinstruct.models.lora import lora_model
from dpinstruct.models.precision import bf16_enabled
from dpinstruct.models.trunk import first_adapted_layer
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import user_level
from dpinstruct.privacy.dp_adam import DPAdam, build_examples, collate, micro_batches, poisson_sample
from dpinstruct.privacy.dp_loop import DPLoop

log = logging.getLogger(__name__)
STAGE = "train_generator"


def plan(params: dict, noisy_count: float, count_component: acct.Component) -> acct.GeneratorPlan:
    """The plan of Algorithm 1; its prior is the histogram of Algorithm 2 and the DP count, the other
    mechanisms on the same records."""
    cfg = params[STAGE]
    hist_sigma = acct.histogram_noise(params.get("privacy"), params.get("histogram"), noisy_count)
    return acct.plan_generator(params.get("privacy"), params.get("histogram"), noisy_count=noisy_count,
                               prior=[(hist_sigma, 1.0, 1), count_component],
                               sampling_rate=P.as_float(cfg["sampling_rate"]), epochs=P.as_float(cfg["epochs"]),
                               clip_norm=P.as_float(cfg["clip_norm"]))


@dataclass
class Fitted:
    model: object  # the peft model with the trained adapter
    tokenizer: object
    plan: acct.GeneratorPlan
    replayable: bool  # False in secure mode (OS randomness)
    skipped: int      # records longer than max_seq_len (a private count)
    neighbouring: str


def fit(params: dict, instructions: list[str], *, units: np.ndarray | None, noisy_count: float,
        count_component: acct.Component, run_key: tuple, checkpoint_dir: Path | str, live_dir: Path | str,
        desc: str = "DP-Adam steps") -> Fitted:
    """Train the adapter; ``units`` (one int per instruction, or None for record-level DP) names
    each instruction's user. ``noisy_count`` and ``count_component``: the DP count of the units and
    its component (sigma, 1, 1) in the composition. ``run_key`` (``dpinstruct.privacy.run_key``) binds the DP streams to the run."""
    cfg = params[STAGE]
    n_units = len(instructions) if units is None else int(units.max()) + 1
    p = plan(params, noisy_count, count_component)  # refuses unsafe configs before any model work
    bf16 = bf16_enabled(cfg["bf16"])
    log.info("plan: q=%.4g T=%d sigma=%.4f C=%s -> composed epsilon %.3f (PLD), %.3f (PRV) at delta %g",
             p.sampling_rate, p.steps, p.noise_multiplier, p.clip_norm, p.composed_epsilon, p.composed_epsilon_prv,
             p.delta)
    loop = DPLoop(STAGE, privacy=params.get("privacy"), run_key=(*run_key, P.params_hash(p.as_dict())),
                  steps=p.steps, noise_multiplier=p.noise_multiplier, sampling_rate=p.sampling_rate, delta=p.delta,
                  checkpoint_dir=checkpoint_dir, live_dir=live_dir, checkpoint_every=cfg["checkpoint_every"])
    torch.manual_seed(cfg["seed"])  # LoRA init only: public, and no DP proof relies on it
    model, tokenizer = lora_model(GENERATOR_DIR, cfg["lora"])
    examples, prompt_len, skipped = build_examples(tokenizer, instructions, cfg["prompt"], cfg["max_seq_len"])
    if skipped:  # a private count: the log and DVCLive (private) only
        log.info("%d train instructions longer than max_seq_len=%d are skipped (never cut: they would lose EOS)",
                 skipped, cfg["max_seq_len"])
    lengths = np.array([len(e) for e in examples])
    kept_units = None if units is None else _kept_units(tokenizer, instructions, units, cfg)
    cap = None if units is None else user_level.max_records(params.get("user_level"))
    dp = DPAdam(model, lr=P.as_float(cfg["lr"]), noise_multiplier=p.noise_multiplier, clip_norm=p.clip_norm,
                expected_batch_size=p.expected_batch_size, noise=loop.noise, autocast_bf16=bf16)
    loss_fn = instruction_loss(first_adapted_layer(model))
    for _ in loop.iterate(model=model, optimizer=dp.optimizer, summary={"skipped_too_long": skipped}, desc=desc):
        if kept_units is None:
            idx = poisson_sample(loop.sampler, len(examples), p.sampling_rate)
            micro = [collate([examples[i] for i in b], prompt_len, tokenizer.pad_token_id)
                     for b in micro_batches(idx, lengths, cfg["micro_batch_tokens"])]
        else:
            idx = user_level.sample_users(loop.sampler, kept_units, n_units, p.sampling_rate, cap)
            micro = [dict(collate([examples[i] for i in b], prompt_len, tokenizer.pad_token_id),
                          unit=torch.from_numpy(kept_units[b]))
                     for b in user_level.micro_batches_by_unit(idx, kept_units, lengths, cfg["micro_batch_tokens"])]
        result = dp.step(micro, loss_fn=loss_fn)
        loop.metrics.update(loss=result.loss, batch_size=result.batch_size)
    return Fitted(model, tokenizer, p, loop.noise.replayable, skipped,
                  acct.NEIGHBOURING if units is None else user_level.NEIGHBOURING)


def _kept_units(tokenizer, instructions: list[str], units: np.ndarray, cfg: dict) -> np.ndarray:
    """The unit of each example ``build_examples`` kept (it drops records longer than max_seq_len)."""
    prompt = len(tokenizer(cfg["prompt"], add_special_tokens=False)["input_ids"])
    bodies = tokenizer(instructions, add_special_tokens=False)["input_ids"]
    return units[np.array([prompt + len(b) + 1 <= cfg["max_seq_len"] for b in bodies], dtype=bool)]
