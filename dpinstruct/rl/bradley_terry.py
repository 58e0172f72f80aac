"""Training the Bradley-Terry head of ``preference_reward`` (DP or not, one code path).

The loss of one comparison is -log sigmoid(w . (phi_c - phi_r)): it depends on the pair only
through delta = phi_c - phi_r, so a pair is ONE row of the head's input and opacus' per-row
gradient IS the comparison's gradient. Clipping it to C clips the privacy unit (one comparison),
with no grouping; ``|delta| <= 2`` for unit embeddings bounds the unclipped norm by 2.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dpinstruct.training.dp_adam import poisson_sample


class BradleyTerryHead(torch.nn.Module):
    """w: the linear score of a feature vector, without bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = torch.nn.Linear(dim, 1, bias=False)
        torch.nn.init.zeros_(self.score.weight)  # no preference before training: every loss starts at log 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.score(features).squeeze(-1)


def pair_loss(model, batch: dict) -> torch.Tensor:
    """[pairs] -log sigmoid(w . delta): ``loss_fn`` of DPAdam, one row per comparison."""
    return -F.logsigmoid(model(batch["delta"]))


def deltas(features) -> np.ndarray:
    """[pairs, d] phi_c - phi_r from a features table (columns ``chosen``, ``rejected``)."""
    return np.stack(features.chosen.to_numpy()) - np.stack(features.rejected.to_numpy())


def train_head(dp, pair_deltas: np.ndarray, sampler, sampling_rate: float, steps, on_step=None) -> None:
    """Train the head wrapped by ``dp`` (a ``DPAdam``) for the step numbers ``steps`` yields: each
    step Poisson-samples comparisons at ``sampling_rate`` from ``sampler`` and takes one (clipped,
    noised: per ``dp``) step on their Bradley-Terry loss. ``on_step(StepResult)`` after each."""
    for _ in steps:
        idx = poisson_sample(sampler, len(pair_deltas), sampling_rate)
        micro = [{"delta": torch.from_numpy(np.ascontiguousarray(pair_deltas[idx], dtype=np.float32))}] if len(idx) else []
        result = dp.step(micro, loss_fn=pair_loss)
        if on_step:
            on_step(result)


def head_weight(head: BradleyTerryHead) -> np.ndarray:
    return head.score.weight.detach().cpu().numpy()[0].astype(np.float32)
