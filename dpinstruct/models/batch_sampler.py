"""Batched decoding of many different prompts (the annotator's and the aligned students' answers).

Built on the primitives of ``sampler`` (preallocated KV cache, sliced output projection, the
nucleus sampler); kept apart from it so that changes here never touch the DP generator's sampling
(`generate` depends on ``sampler`` only).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from dpinstruct.models.sampler import COMPACT_SHARE, PreallocatedLayer, RowGenerators, next_token_logits, nucleus_sample


def _common_prefix(prompts: list[list[int]]) -> int:
    first, length = prompts[0], min(len(p) for p in prompts)
    for p in prompts[1:]:
        length = next((i for i in range(length) if p[i] != first[i]), length)
    return length


def pick(logits: torch.Tensor, top_p: float, temperature: float, generator: torch.Generator | RowGenerators) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else the temperature-scaled nucleus."""
    return logits.argmax(-1) if temperature == 0 else nucleus_sample(logits, top_p, temperature, generator)


@torch.inference_mode()
def sample_prompts(model, prompts: list[list[int]], *, eos_id: int, pad_id: int, max_new_tokens: int, top_p: float,
                   temperature: float, generator: torch.Generator | RowGenerators, on_tokens=None) -> list[list[int]]:
    """Token ids of one continuation of each prompt (prompt excluded, ending with EOS unless cut at
    ``max_new_tokens``), all prompts decoded as one batch; temperature 0 is greedy.

    The prefix all prompts share is run once; the rest of each prompt is left-padded after it: the
    attention mask hides the padding and each row's positions count its own tokens only, so a row's
    continuation is that of the prompt alone (up to float rounding of the batched kernels). The KV
    cache is preallocated and finished rows leave the batch, as in ``sample``. With a
    ``RowGenerators`` (one per prompt) each row's draws are its own, whatever else is in the batch.
    """
    device = next(model.parameters()).device
    n = len(prompts)
    # Prompts under one chat template share a prefix (system prompt, turn markers): run it once at
    # batch 1 and broadcast its cache, as ``sample`` does with its fixed prompt; only the rest of
    # each prompt is prefilled per row. Every row keeps at least one token of its own.
    shared = min(min(len(p) for p in prompts) - 1, _common_prefix(prompts))
    suffixes = [p[shared:] for p in prompts]
    width = max(len(p) for p in suffixes)
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    mask = torch.ones((n, shared + width), dtype=torch.long, device=device)
    mask[:, shared:] = 0
    for i, p in enumerate(suffixes):
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        mask[i, shared + width - len(p):] = 1
    layers = [PreallocatedLayer(shared + width + max_new_tokens) for _ in range(model.config.num_hidden_layers)]
    cache = Cache(layers=layers)
    if shared:
        next_token_logits(model, torch.tensor([prompts[0][:shared]], device=device), cache)
        for layer in layers:
            layer.broadcast(n)
    logits = next_token_logits(model, ids, cache, ((mask.cumsum(1) - 1).clamp_min(0))[:, shared:], mask)
    next_position = mask.sum(1)  # [rows]: the position of each row's next token
    rows = torch.arange(n, device=device)
    out = torch.zeros(n, max_new_tokens, dtype=torch.long, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    live = torch.ones(n, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = pick(logits, top_p, temperature, generator)
        active = live.nonzero().squeeze(1)
        out[rows[active], step] = token[active]
        lengths[rows[active]] += 1
        live &= token != eos_id
        if on_tokens:
            on_tokens(int(active.numel()))
        if not live.any() or step == max_new_tokens - 1:
            break
        if (~live).sum() >= COMPACT_SHARE * live.numel():
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, token, live, mask, next_position = rows[keep], token[keep], live[keep], mask[keep], next_position[keep]
            if isinstance(generator, RowGenerators):
                generator = generator.select(keep)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = next_token_logits(model, token[:, None], cache, next_position[:, None], mask)
        next_position = next_position + 1
    return [out[i, :lengths[i]].tolist() for i in range(n)]
