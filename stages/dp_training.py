"""DP-Adam for a LoRA generator (Algorithm 1 of Yu et al. 2024), built on opacus.

One logical step:
  1. Poisson sampling: each of the N train records joins the batch independently with
     probability q (so batch sizes vary, mean qN; an empty batch is a valid step).
  2. The sampled records are sorted by length and packed into physical micro-batches under a
     token budget, each padded only to its own longest sequence. This is post-processing of the
     sampled set and leaves the privacy analysis unchanged.
  3. opacus computes per-example gradients of the LoRA parameters, clips each to norm C and sums
     them across micro-batches (DPOptimizer with skipped steps, as BatchMemoryManager does); at the
     last micro-batch it adds N(0, (sigma C)^2) noise once, divides by the EXPECTED batch size qN
     and takes the Adam step.
A record's loss is the mean token cross-entropy over its instruction tokens and EOS (the fixed
generation prompt is context, not target), so each record contributes one gradient.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

IGNORE = -100
# opacus hooks the LoRA layers with full backward hooks; the frozen embedding input has no grad,
# which torch reports on every step although it is exactly what we want.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def build_examples(tokenizer, instructions: list[str], prompt: str, max_len: int) -> tuple[list[list[int]], int]:
    """Token ids of prompt + instruction + EOS, cut at max_len; and the prompt length."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bodies = tokenizer(instructions, add_special_tokens=False)["input_ids"]
    return [(prompt_ids + body + [tokenizer.eos_token_id])[:max_len] for body in bodies], len(prompt_ids)


def poisson_sample(rng: np.random.Generator, n: int, q: float) -> np.ndarray:
    return np.flatnonzero(rng.random(n) < q)


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


class DPAdam:
    """opacus GradSampleModule + DPOptimizer(Adam) driven one Poisson logical batch at a time.

    noise_multiplier 0 and clip_norm inf give the non-private baseline through the same code path
    (clip factor 1, zero noise, same averaging by the expected batch size).
    """

    def __init__(self, model, *, lr: float, noise_multiplier: float, clip_norm: float, expected_batch_size: float,
                 noise_seed: int, secure_mode: bool = False, autocast_bf16: bool = False):
        self.model = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        params = [p for p in self.model.parameters() if p.requires_grad]
        # opacus multiplies noise_multiplier by max_grad_norm; inf x 0 would be nan, so "no clipping"
        # is a finite norm no gradient reaches.
        # secure_mode draws noise from a cryptographic source, which cannot be seeded or replayed.
        # opacus draws noise on the parameters' device, so the generator must live there too.
        self.noise_generator = None if secure_mode else torch.Generator(params[0].device).manual_seed(noise_seed)
        self.optimizer = DPOptimizer(torch.optim.Adam(params, lr=lr), noise_multiplier=noise_multiplier,
                                     max_grad_norm=clip_norm if np.isfinite(clip_norm) else 1e30,
                                     expected_batch_size=expected_batch_size, loss_reduction="mean",
                                     generator=self.noise_generator, secure_mode=secure_mode)
        self.device_type = params[0].device.type
        self.autocast_bf16 = autocast_bf16

    def step(self, micro: list[dict[str, torch.Tensor]]) -> StepResult:
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
                losses = per_example_loss(self.model, batch)
            losses.mean().backward()
            if self.autocast_bf16:
                # Clip in fp32: a norm computed in bf16 can under-state the true norm by ~0.4%,
                # which would break the sensitivity bound C.
                for p in self.optimizer.params:
                    p.grad_sample = p.grad_sample.float()
            total, rows = total + losses.detach().sum().item(), rows + len(losses)
            if i < len(micro) - 1:
                self.optimizer.signal_skip_step(True)
            self.optimizer.step()
            self.optimizer.zero_grad()
        return StepResult(rows, total / rows)
