"""log p(target | position) through the output head without materialising the logits.

PPO needs one number per generated token, log softmax(h W^T)[target], for hundreds of rows at a
time. The plain way writes every position's full logits (49,152 floats each: 1.2 GB for 250
rollouts of 25 positions) and reads them back for the softmax, which on a CPU costs more than the
transformer layers under a top-layer adapter. Here the logsumexp is accumulated over blocks of
positions x vocabulary slices that stay in cache, and the backward pass recomputes each block's
softmax instead of storing it (the same trade as a fused cross-entropy kernel):

    d logp / d h = W[target] - sum_v softmax(h W^T)_v W_v

Values equal ``log_softmax(h @ W.T).gather(target)`` to float rounding (tests/models/test_token_logprob.py).
The head must be a plain linear map without bias, and frozen when gradients are on (as the tied head
of a LoRA policy): its own gradient is not computed.
"""
from __future__ import annotations

import torch

ROWS = 256      # positions per block
VOCAB = 2048    # vocabulary slice per block (the sampler's measured sweet spot)


def _logsumexp(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for r in range(0, hidden.shape[0], ROWS):
        h = hidden[r:r + ROWS]
        blocks = torch.stack([torch.logsumexp(h @ weight[v:v + VOCAB].T, dim=-1)
                              for v in range(0, weight.shape[0], VOCAB)], dim=-1)
        out[r:r + ROWS] = torch.logsumexp(blocks, dim=-1)
    return out


class _TargetLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets):
        lse = _logsumexp(hidden, weight)
        ctx.save_for_backward(hidden, weight, targets, lse)
        return (hidden * weight[targets]).sum(-1) - lse

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = weight[targets] * grad[:, None]
        for r in range(0, hidden.shape[0], ROWS):
            h, g, m = hidden[r:r + ROWS], grad[r:r + ROWS, None], lse[r:r + ROWS, None]
            for v in range(0, weight.shape[0], VOCAB):
                w = weight[v:v + VOCAB]
                grad_hidden[r:r + ROWS] -= (torch.exp(h @ w.T - m) * g) @ w
        return grad_hidden, None, None


def target_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """[...] log-probability of each ``targets`` token [...] given the final hidden states
    ``hidden`` [..., d] under the output ``head``."""
    if head.bias is not None or (head.weight.requires_grad and torch.is_grad_enabled()):
        raise ValueError("target_logprobs needs an output head without bias, frozen when gradients are on "
                         "(its own gradient is not computed)")
    flat = _TargetLogProb.apply(hidden.reshape(-1, hidden.shape[-1]).float(), head.weight.float(), targets.reshape(-1))
    return flat.view(targets.shape)
