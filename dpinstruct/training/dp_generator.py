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

from dpinstruct.io.settings.generation import TrainGenerator
from dpinstruct.io.settings.privacy import Histogram, Privacy, Randomness, UserLevel
from dpinstruct.models.instruction_loss import instruction_loss
from dpinstruct.models.loading import GENERATOR_DIR
from dpinstruct.models.lora import lora_model
from dpinstruct.models.precision import bf16_enabled
from dpinstruct.models.trunk import first_adapted_layer
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, user_level
from dpinstruct.training.dp_adam import build_examples, collate, micro_batches
from dpinstruct.training.mechanism import DPSGDMechanism, Scope

log = logging.getLogger(__name__)
STAGE = "train_generator"
DATASET = "instructions"  # the private dataset Algorithm 1 touches (ledger, composition)
TRAIN = Path("data/prepared/train.parquet")
COUNT = "instructions"    # its DP count (stage dp_count@instructions)
# Every file or folder Algorithm 1 reads: bound into its DP streams (train_generator's and the canary
# audit's; a test checks dvc.yaml's deps agree).
INPUTS = (TRAIN, GENERATOR_DIR, dp_count.entry_path(COUNT))


def plan(params: dict, noisy_count: float, count_component: acct.Component) -> acct.DPSGDPlan:
    """The plan of Algorithm 1; its prior is the histogram of Algorithm 2 and the DP count, the other
    mechanisms on the same records."""
    cfg, privacy = TrainGenerator.from_params(params), Privacy.from_params(params)
    histogram = Histogram.from_params(params)
    hist_sigma = acct.histogram_noise(privacy, histogram, noisy_count)
    return acct.plan_generator(privacy, histogram, noisy_count=noisy_count,
                               prior=[(hist_sigma, 1.0, 1), count_component],
                               sampling_rate=cfg.sampling_rate, epochs=cfg.epochs, clip_norm=cfg.clip_norm)


def sections(params: dict) -> tuple[dict, ...]:
    """The params sections Algorithm 1 reads, as params.yaml wrote them (each checked): what its
    artifacts are hashed with and its DP streams bound to (train_generator, and the audit's copies)."""
    return (TrainGenerator.from_params(params).raw, Privacy.from_params(params).raw,
            Histogram.from_params(params).raw, UserLevel.from_params(params).raw)


@dataclass
class Fitted:
    model: object  # the peft model with the trained adapter
    tokenizer: object
    mechanism: DPSGDMechanism  # its plan, and the ledger entry written from it
    skipped: int      # records longer than max_seq_len (a private count)

    @property
    def plan(self) -> acct.DPSGDPlan:
        return self.mechanism.plan


def scope(units: np.ndarray | None, cap: int) -> Scope:
    """What Algorithm 1 touches: every train record of the instructions, or every user's (at most
    ``cap`` of their records in a step)."""
    if units is None:
        return Scope(STAGE, DATASET, "all", "one instruction")
    return Scope(STAGE, DATASET, "all", f"one user (all their instructions; at most {cap} of them in a step)",
                 user_level.NEIGHBOURING)


def fit(params: dict, instructions: list[str], *, units: np.ndarray | None, noisy_count: float,
        count_component: acct.Component, run_key: tuple, checkpoint_dir: Path | str, live_dir: Path | str,
        desc: str = "DP-Adam steps") -> Fitted:
    """Train the adapter; ``units`` (one int per instruction, or None for record-level DP) names
    each instruction's user. ``noisy_count`` and ``count_component``: the DP count of the units and
    its component (sigma, 1, 1) in the composition. ``run_key`` (``dpinstruct.privacy.run_key``) binds the DP streams to the run."""
    cfg = TrainGenerator.from_params(params)
    cap = None if units is None else UserLevel.read(params, "max_records_per_user")
    n_units = len(instructions) if units is None else int(units.max()) + 1
    p = plan(params, noisy_count, count_component)  # refuses unsafe configs before any model work
    bf16 = bf16_enabled(cfg.bf16)
    mech = DPSGDMechanism(scope(units, cap), p, privacy=Randomness.from_params(params), run_key=run_key,
                          checkpoint_dir=checkpoint_dir, live_dir=live_dir, checkpoint_every=cfg.checkpoint_every)
    torch.manual_seed(cfg.seed)  # LoRA init only: public, and no DP proof relies on it
    model, tokenizer = lora_model(GENERATOR_DIR, cfg.lora)
    examples, prompt_len, skipped = build_examples(tokenizer, instructions, cfg.prompt, cfg.max_seq_len)
    if skipped:  # a private count: the log and DVCLive (private) only
        log.info("%d train instructions longer than max_seq_len=%d are skipped (never cut: they would lose EOS)",
                 skipped, cfg.max_seq_len)
    lengths = np.array([len(e) for e in examples])
    kept_units = None if units is None else _kept_units(tokenizer, instructions, units, cfg)
    dp = mech.optimizer(model, lr=cfg.lr, autocast_bf16=bf16)
    loss_fn = instruction_loss(first_adapted_layer(model))
    for _ in mech.steps(summary={"skipped_too_long": skipped}, desc=desc):
        if kept_units is None:
            micro = [collate([examples[i] for i in b], prompt_len, tokenizer.pad_token_id)
                     for b in micro_batches(mech.sample(len(examples)), lengths, cfg.micro_batch_tokens)]
        else:
            idx = user_level.sample_users(mech.loop.sampler, kept_units, n_units, p.sampling_rate, cap)
            micro = [dict(collate([examples[i] for i in b], prompt_len, tokenizer.pad_token_id),
                          unit=torch.from_numpy(kept_units[b]))
                     for b in user_level.micro_batches_by_unit(idx, kept_units, lengths, cfg.micro_batch_tokens)]
        result = dp.step(micro, loss_fn=loss_fn)
        mech.metrics.update(loss=result.loss, batch_size=result.batch_size)
    return Fitted(model, tokenizer, mech, skipped)


def _kept_units(tokenizer, instructions: list[str], units: np.ndarray, cfg: TrainGenerator) -> np.ndarray:
    """The unit of each example ``build_examples`` kept (it drops records longer than max_seq_len)."""
    prompt = len(tokenizer(cfg.prompt, add_special_tokens=False)["input_ids"])
    bodies = tokenizer(instructions, add_special_tokens=False)["input_ids"]
    return units[np.array([prompt + len(b) + 1 <= cfg.max_seq_len for b in bodies], dtype=bool)]
