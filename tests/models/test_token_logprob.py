"""The fused target log-probability against log_softmax + gather, values and gradients, on shapes
that cross its block boundaries (rows and vocabulary not multiples of the blocks)."""
from __future__ import annotations

import pytest
import torch

from dpinstruct.models import token_logprob as T


@pytest.fixture
def head():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, T.VOCAB * 2 + 37, bias=False)
    linear.weight.requires_grad_(False)
    return linear


def reference(hidden, head, targets):
    return torch.log_softmax(hidden @ head.weight.T, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def test_values_and_gradients_match_the_plain_log_softmax(head):
    hidden = torch.randn(3, T.ROWS // 2 + 5, 16, requires_grad=True)
    targets = torch.randint(0, head.weight.shape[0], (3, T.ROWS // 2 + 5))
    fused = T.target_logprobs(hidden, head, targets)
    plain = reference(hidden, head, targets)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(plain)
    (g_fused,) = torch.autograd.grad((fused * weights).sum(), hidden)
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), hidden)
    torch.testing.assert_close(g_fused, g_plain, atol=1e-5, rtol=1e-4)


def test_a_trainable_head_under_grad_or_a_bias_is_refused(head):
    hidden, targets = torch.randn(2, 16), torch.zeros(2, dtype=torch.long)
    head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen when gradients are on"):
        T.target_logprobs(hidden, head, targets)
    with torch.no_grad():  # evaluation of a loaded model: nothing to differentiate
        torch.testing.assert_close(T.target_logprobs(hidden, head, targets), reference(hidden, head, targets))
    with pytest.raises(ValueError, match="without bias"):
        T.target_logprobs(hidden, torch.nn.Linear(16, 8).requires_grad_(False), targets)
