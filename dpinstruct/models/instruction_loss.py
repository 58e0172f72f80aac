"""Each record's mean next-token NLL over its instruction tokens and EOS, computed with less work.

The same number as ``dp_adam.per_example_loss`` (to float rounding: tests/models/test_instruction_loss.py),
from three savings:
  * the output head runs only at target positions. The plain way projects every position (prompt,
    padding) onto the 49k vocabulary and keeps those logits for the backward pass; the fused
    ``target_logprobs`` projects in cache-sized blocks and recomputes them in the backward pass;
  * with an adapter on the upper blocks only (``lora.layers``), the blocks below it run once
    without autograd (``trunk``) and the backward pass stops at the first adapted block;
  * nothing changes the DP analysis: the loss of a row still depends on that row alone.
Padding is on the right (``dp_adam.collate``), so the default positions 0..len-1 are correct.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from dpinstruct.models.token_logprob import target_logprobs
from dpinstruct.models.trunk import output_head, top_hidden, trunk
from dpinstruct.training.dp_adam import IGNORE, collate, micro_batches


def row_nll(model, batch: dict[str, torch.Tensor], start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([rows] summed NLL of each row's target tokens, [rows] their counts); ``start`` is the first
    block with trainable parameters (0: all)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    hidden = trunk(model, ids, start, batch_size=len(ids), attention_mask=mask)
    final = top_hidden(model, hidden, start, attention_mask=mask)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logp = target_logprobs(final[:, :-1][keep], output_head(model), targets[keep])
    rows = keep.nonzero()[:, 0]
    summed = torch.zeros(len(ids), dtype=logp.dtype, device=logp.device).index_add(0, rows, -logp)
    return summed, keep.sum(1)


SCORING_TOKEN_BUDGET = 4096  # rows x longest per forward (no gradients: larger than training's)


@torch.no_grad()
def record_nll(model, examples: list[list[int]], prompt_len: int, pad_id: int,
               desc: str = "NLL") -> tuple[np.ndarray, np.ndarray]:
    """([records] summed target-token NLL, [records] target-token counts), in ``examples`` order:
    the one held-out measure of val_nll, the tuning tool and bench_generator_utility."""
    lengths = np.array([len(e) for e in examples])
    nll, tokens = np.zeros(len(examples)), np.zeros(len(examples))
    for batch in tqdm(micro_batches(np.arange(len(examples)), lengths, SCORING_TOKEN_BUDGET), desc=desc, unit="batch"):
        rows = {k: v.to(model.device) for k, v in collate([examples[i] for i in batch], prompt_len, pad_id).items()}
        summed, counts = row_nll(model, rows, 0)
        nll[batch], tokens[batch] = summed.double().cpu().numpy(), counts.cpu().numpy()
    return nll, tokens


def instruction_loss(start: int):
    """``loss_fn(model, batch) -> [rows]`` for DPAdam: each row's mean target-token NLL."""

    def loss_fn(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        summed, counts = row_nll(model, batch, start)
        return summed / counts.clamp(min=1)

    return loss_fn
