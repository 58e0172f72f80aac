"""A causal LM split at one layer: the frozen trunk below an adapter run once, the top many times.

When a LoRA adapter touches only the top layers (DP-PPO's r-4 adapter on layers 28 and 29 of 30),
the hidden states entering the first adapted layer are the same for the policy, for the reference
(the adapter disabled) and for the training forward. ``trunk`` computes them once per batch;
``top_hidden`` runs only the layers from ``start`` up on them (the output head is then applied
per target token, dpinstruct/models/token_logprob.py). The values are
those of a full forward up to float rounding (tests/models/test_trunk.py); the saving on a DP-PPO step is
most of three 30-layer forwards.

The split swaps the decoder's layer list (and, for the trunk, its final norm) for the duration of
one call, so the forward is the model's own: masks, rotary positions and adapter hooks (opacus'
per-example gradient hooks included) are untouched. Without ``attention_mask`` rows must not be
padded (positions 0..len-1 in every row, as in DP-PPO's fixed-length rollouts); padded rows (RLHF's
chat prompts) pass their mask and per-row ``position_ids`` to both halves.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def decoder(model) -> torch.nn.Module:
    """The decoder stack (embeddings, layers, final norm) inside a possibly wrapped causal LM."""
    for module in model.modules():
        if isinstance(getattr(module, "layers", None), torch.nn.ModuleList) and hasattr(module, "norm") \
                and hasattr(module, "embed_tokens"):
            return module
    raise TypeError(f"{type(model).__name__} has no decoder with embed_tokens, layers and norm")


@contextmanager
def _swapped(stack: torch.nn.Module, layers: torch.nn.ModuleList, norm: torch.nn.Module):
    saved = stack.layers, stack.norm
    stack.layers, stack.norm = layers, norm
    try:
        yield
    finally:
        stack.layers, stack.norm = saved


def _rows(kwargs: dict, i: int, j: int) -> dict:
    return {k: v[i:j] for k, v in kwargs.items() if v is not None}


@torch.no_grad()
def trunk(model, ids: torch.Tensor, start: int, batch_size: int = 32, *, attention_mask=None,
          position_ids=None) -> torch.Tensor:
    """[rows, len, hidden]: the hidden states entering layer ``start`` (the embeddings when 0)."""
    stack, extra = decoder(model), {"attention_mask": attention_mask, "position_ids": position_ids}
    with _swapped(stack, stack.layers[:start], torch.nn.Identity()):
        return torch.cat([stack(input_ids=ids[i:i + batch_size], **_rows(extra, i, i + batch_size)).last_hidden_state
                          for i in range(0, len(ids), batch_size)])


def top_hidden(model, hidden: torch.Tensor, start: int, *, attention_mask=None, position_ids=None) -> torch.Tensor:
    """[rows, len, d] final (normed) hidden states from the trunk's ``hidden`` through layers
    ``start``..; ``model`` may be wrapped (peft, opacus: their hooks sit on the layers' modules)."""
    stack, extra = decoder(model), {"attention_mask": attention_mask, "position_ids": position_ids}
    with _swapped(stack, stack.layers[start:], stack.norm):
        return stack(inputs_embeds=hidden, **_rows(extra, 0, len(hidden))).last_hidden_state


def output_head(model) -> torch.nn.Linear:
    """The output projection (``lm_head``) inside a possibly wrapped causal LM."""
    for module in model.modules():
        if isinstance(getattr(module, "lm_head", None), torch.nn.Linear):
            return module.lm_head
    raise TypeError(f"{type(model).__name__} has no lm_head")


class TrunkRecorder:
    """Records the hidden states entering layer ``start`` on every forward call while active, so
    that an incremental decode (prefix, prefill, one token per step) yields the trunk of the whole
    sequence for free: ``sequence(rows)`` joins the calls along positions, broadcasting a batch-1
    call (a shared prefix run once). Valid while no row leaves the batch (fixed-length decoding);
    a call of another batch size is refused."""

    def __init__(self, model, start: int):
        self.layer, self.parts = decoder(model).layers[start], []

    def __enter__(self) -> TrunkRecorder:
        self.handle = self.layer.register_forward_pre_hook(lambda _module, args: self.parts.append(args[0]))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def sequence(self, rows: int) -> torch.Tensor:
        if any(p.shape[0] not in (1, rows) for p in self.parts):
            raise RuntimeError(f"recorded batch sizes {[p.shape[0] for p in self.parts]} do not all broadcast to {rows}")
        return torch.cat([p.expand(rows, -1, -1) for p in self.parts], dim=1)


def first_adapted_layer(model) -> int:
    """The lowest layer holding a trainable parameter (the adapter's first block): where to split."""
    layers = decoder(model).layers
    return next((i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())), len(layers))
