"""DP-Adam for a LoRA generator (Algorithm 1 of Yu et al. 2024), built on opacus.

One logical step:
  1. Poisson sampling: each of the N train records joins the batch independently with
     probability q (so batch sizes vary, mean qN; an empty batch is a valid step). The inclusion
     draws come from a secret-keyed or OS stream (dpinstruct/privacy/randomness.py), never from a seed.
  2. The sampled records are sorted by length and packed into physical micro-batches under a
     token budget, each padded only to its own longest sequence. This is post-processing of the
     sampled set and leaves the privacy analysis unchanged.
  3. opacus computes per-example gradients of the LoRA parameters, clips each to norm C and sums
     them across micro-batches (DPOptimizer with skipped steps, as BatchMemoryManager does); at the
     last micro-batch it adds N(0, (sigma C)^2) noise once (drawn from the same kind of stream,
     not from opacus' generator), divides by the public ``expected_batch_size`` and takes the Adam
     step. That divisor is a param, not qN: N is private, and dividing by it would make the update
     depend on N outside the mechanism (Adam is nearly invariant to the scale anyway).
A record's loss is the mean token cross-entropy over its instruction tokens and EOS (the fixed
generation prompt is context, not target), so each record contributes one gradient. A record
longer than ``max_len`` is skipped, never cut: a cut row loses its EOS and teaches the generator
not to stop. Skipping looks at that record alone, so neighbouring datasets stay neighbouring.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from dpinstruct.privacy.randomness import DPRandom

IGNORE = -100
# opacus hooks the LoRA layers with full backward hooks; the frozen embedding input has no grad,
# which torch reports on every step although it is exactly what we want.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def build_examples(tokenizer, instructions: list[str], prompt: str, max_len: int) -> tuple[list[list[int]], int, int]:
    """Token ids of prompt + instruction + EOS for every record that fits in max_len tokens; the
    prompt length; and how many records were skipped as too long (a private count)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + 2 > max_len:
        raise ValueError(f"max_len {max_len} leaves no room for an instruction after a {len(prompt_ids)}-token prompt")
    bodies = tokenizer(instructions, add_special_tokens=False)["input_ids"]
    examples = [prompt_ids + body + [tokenizer.eos_token_id] for body in bodies]
    kept = [e for e in examples if len(e) <= max_len]
    return kept, len(prompt_ids), len(examples) - len(kept)


def poisson_sample(random: DPRandom, n: int, q: float) -> np.ndarray:
    """Indices of the records included in one step, each independently with probability q."""
    return np.flatnonzero(random.bernoulli(n, q))


def micro_batches(indices: np.ndarray, lengths: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Pack sampled indices, longest first, into micro-batches with rows x longest <= token_budget."""
    order = indices[np.argsort(-lengths[indices], kind="stable")]
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[current[0]] > token_budget:
            batches.append(np.array(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.array(current))
    return batches


def collate(examples: list[list[int]], prompt_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e)] = torch.tensor(e)
        mask[row, : len(e)] = 1
        labels[row, prompt_len: len(e)] = ids[row, prompt_len: len(e)]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def per_example_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over each row's target tokens; shape (rows,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
    targets = batch["labels"][:, 1:]
    token_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                                 reduction="none").view_as(targets)
    counts = (targets != IGNORE).sum(1).clamp(min=1)
    return token_loss.sum(1) / counts


@dataclass
class StepResult:
    batch_size: int
    loss: float  # mean per-example loss of the sampled records (nan for an empty batch)


class KeyedNoiseDPOptimizer(DPOptimizer):
    """opacus' DPOptimizer with its Gaussian noise drawn from a DPRandom stream.

    opacus draws noise from a torch generator; with ``secure_mode=True`` and no generator it falls
    back to torch's global RNG, which any seed in the code or params replays. Every other part of
    the step (per-example clipping, accumulation over micro-batches, scaling) is opacus' own.
    """

    def __init__(self, *args, noise: DPRandom, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise = noise

    def add_noise(self):
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            grad = p.summed_grad
            if std > 0:
                grad = grad + torch.from_numpy(self.noise.normal(tuple(grad.shape), std)).to(grad.device, grad.dtype)
            p.grad = grad.view_as(p)
            _mark_as_processed(p.summed_grad)


class DPAdam:
    """opacus GradSampleModule + DPOptimizer(Adam) driven one Poisson logical batch at a time.

    noise_multiplier 0 and clip_norm inf give the non-private baseline through the same code path
    (clip factor 1, zero noise, same averaging by the expected batch size).
    """

    def __init__(self, model, *, lr: float, noise_multiplier: float, clip_norm: float, expected_batch_size: float,
                 noise: DPRandom, autocast_bf16: bool = False):
        self.model = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        params = [p for p in self.model.parameters() if p.requires_grad]
        # opacus multiplies noise_multiplier by max_grad_norm; inf x 0 would be nan, so "no clipping"
        # is a finite norm no gradient reaches.
        self.noise = noise
        self.optimizer = KeyedNoiseDPOptimizer(torch.optim.Adam(params, lr=lr), noise_multiplier=noise_multiplier,
                                               max_grad_norm=clip_norm if np.isfinite(clip_norm) else 1e30,
                                               expected_batch_size=expected_batch_size, loss_reduction="mean",
                                               noise=noise)
        self.device_type = params[0].device.type
        self.autocast_bf16 = autocast_bf16

    def step(self, micro: list[dict[str, torch.Tensor]], loss_fn=None) -> StepResult:
        """One logical step over the micro-batches of one Poisson sample.

        ``loss_fn(model, batch) -> [rows]`` gives each row's loss (default: ``per_example_loss``).
        When a batch carries ``unit`` ([rows] ints), the rows of one unit are ONE privacy unit (a
        PPO prompt and all its rollouts): their per-row gradients are averaged into one per unit
        before opacus clips, so that each unit, not each row, is clipped to C. A unit must not
        span two micro-batches.
        """
        loss_fn = loss_fn or per_example_loss
        self.model.train()
        if not micro:
            # Empty Poisson batch: the step still happens and releases pure noise.
            for p in self.optimizer.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            self.optimizer.step()
            self.optimizer.zero_grad()
            return StepResult(0, float("nan"))
        total, rows = 0.0, 0
        for i, batch in enumerate(micro):
            batch = {k: v.to(self.device_type) for k, v in batch.items()}
            with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
                losses = loss_fn(self.model, batch)
            losses.mean().backward()
            if self.autocast_bf16:
                # Clip in fp32: a norm computed in bf16 can under-state the true norm by ~0.4%,
                # which would break the sensitivity bound C.
                for p in self.optimizer.params:
                    p.grad_sample = p.grad_sample.float()
            if "unit" in batch:
                units = group_by_unit(self.optimizer.params, batch["unit"])
                total, rows = total + _unit_means(losses.detach(), batch["unit"]).sum().item(), rows + units
            else:
                total, rows = total + losses.detach().sum().item(), rows + len(losses)
            if i < len(micro) - 1:
                self.optimizer.signal_skip_step(True)
            self.optimizer.step()
            self.optimizer.zero_grad()
        return StepResult(rows, total / rows)


def group_by_unit(params, unit: torch.Tensor) -> int:
    """Replace each parameter's per-row gradients [rows, ...] by per-unit ones [units, ...], the mean
    over each unit's rows (a unit's gradient is that of its mean loss); returns the unit count."""
    _, inverse, counts = torch.unique(unit, return_inverse=True, return_counts=True)
    for p in params:
        rows = p.grad_sample
        summed = rows.new_zeros((len(counts), *rows.shape[1:])).index_add_(0, inverse, rows)
        p.grad_sample = summed / counts.to(rows.dtype).view(-1, *([1] * (rows.dim() - 1)))
    return len(counts)


def _unit_means(values: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    _, inverse, counts = torch.unique(unit, return_inverse=True, return_counts=True)
    return values.new_zeros(len(counts)).index_add_(0, inverse, values) / counts.to(values.dtype)
