"""Fast ancestral sampling from a causal LM, with the same distribution as stock ``generate``.

One decoder, ``sample``, for every caller: ``n`` continuations of ONE prompt (the DP generator's
fixed prompt: ``generate``), or a batch of prompts of equal or unequal lengths (the annotator, the
aligned students, DP-PPO's and RLHF's rollouts). Savings over ``model.generate`` that do not touch
the sampling distribution:

* what every row shares is run once at batch 1 and its KV cache broadcast to the batch: the whole
  prompt when there is one (then no row is ever padded and no attention mask is needed), the
  prompts' common prefix (a chat template's system prompt and turn markers) for a batch;
* the rest of each prompt of a batch is left-padded: the attention mask hides the padding and each
  row's positions count its own tokens only, so a row's continuation is that of its prompt alone
  (up to float rounding of the batched kernels);
* the KV cache is preallocated and written in place (``generate``'s default cache concatenates
  every layer's keys and values at every step, a copy that grows with length);
* finished rows leave the batch (compacting the cache when enough have finished), so no compute
  is spent after a row's EOS;
* the nucleus is sampled by rejection (``nucleus_sample``) instead of sorting the 49k-token
  vocabulary of every row at every step;
* the output projection is computed in vocabulary slices that stay in cache.

Randomness: one ``torch.Generator`` for the batch, or a ``RowGenerators`` (one per row, following
the rows when finished ones leave the batch): then a row's draws are its own, whatever else is in
the batch (DP-PPO's sensitivity argument).

Nucleus semantics are those of transformers' ``TopPLogitsWarper``: after dividing logits by the
temperature, keep the most likely tokens whose cumulative probability, counted before each
token, is below ``top_p`` (so at least one token is always kept), then renormalise. Tokens tied
in probability at the nucleus boundary are all kept (transformers keeps an arbitrary subset).
Temperature 0 is greedy. ``tests/models/test_sampler.py`` checks supports, frequencies and the
greedy limit against transformers.
"""
from __future__ import annotations

import numbers

import torch
from transformers.cache_utils import Cache, DynamicLayer

# Rejection rounds before the sort-based fallback: each accepts a row with probability >= top_p,
# so at top_p 0.95 a row is left after 4 rounds with probability < 1e-5.
REJECTION_ROUNDS = 4
CDF_BLOCK = 256
# The output projection (vocabulary 49k) is computed in slices of this many tokens: measured
# 25% faster than one GEMM on 2 CPU cores (the slice's weights stay in cache); same values.
VOCAB_SLICE = 2048
# Compact the batch when this share of its rows has finished (a compaction copies the cache).
COMPACT_SHARE = 0.125


class PreallocatedLayer(DynamicLayer):
    """One layer's KV cache in a buffer of fixed capacity, written in place."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            b, h, _, d = key_states.shape
            self.dtype, self.device = key_states.dtype, key_states.device
            self.keys = key_states.new_empty((b, h, self.capacity, d))
            self.values = value_states.new_empty((b, h, self.capacity, d))
            self.is_initialized = True
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded")
        self.keys[:, :, self.length:end] = key_states
        self.values[:, :, self.length:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.keys, self.values = self.keys[indices], self.values[indices]

    def broadcast(self, batch: int) -> None:
        self.keys = self.keys.expand(batch, -1, -1, -1).contiguous()
        self.values = self.values.expand(batch, -1, -1, -1).contiguous()


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nucleus by a full sort: ``(p, ids)``, both [rows, width], ``p`` renormalised
    (zeros past a row's nucleus), ``ids`` the token ids. ``probs`` is [rows, vocab] after
    temperature and softmax. The reference definition, and the sampler's rare fallback."""
    p, ids = probs.sort(dim=-1, descending=True)
    if top_p >= 1.0:  # no nucleus (as transformers): float cumsums must not drop the far tail
        return p, ids
    before = p.cumsum(-1) - p  # mass of the strictly more likely tokens
    width = int((before < top_p).sum(-1).max())
    p = torch.where(before[:, :width] < top_p, p[:, :width], torch.zeros_like(p[:, :width]))
    return p / p.sum(-1, keepdim=True), ids[:, :width]


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ids drawn from each row of ``probs`` [rows, vocab] at uniforms ``u`` [rows, 1].

    Two levels so that no float64 copy of the whole matrix is needed: the cumulative mass of
    blocks of CDF_BLOCK tokens (summed in float32, then accumulated in float64) picks a block,
    then the float64 cumulative sum inside that block picks the token. Each token keeps its
    probability to float32 rounding, as in a plain multinomial.
    """
    rows, vocab = probs.shape
    n_blocks = -(-vocab // CDF_BLOCK)
    padded = probs if vocab % CDF_BLOCK == 0 else torch.nn.functional.pad(probs, (0, n_blocks * CDF_BLOCK - vocab))
    blocks = padded.view(rows, n_blocks, CDF_BLOCK)
    cum = blocks.sum(-1).double().cumsum(-1)  # [rows, n_blocks]
    target = u * cum[:, -1:]
    block = torch.searchsorted(cum, target, right=True).clamp_max(n_blocks - 1)  # [rows, 1]: first cum > target
    before = torch.where(block > 0, cum.gather(1, (block - 1).clamp_min(0)), torch.zeros_like(target))
    inner = blocks.gather(1, block[:, :, None].expand(rows, 1, CDF_BLOCK)).squeeze(1).double().cumsum(-1)
    within = torch.searchsorted(inner, target - before, right=True).clamp_max(CDF_BLOCK - 1)
    return (block * CDF_BLOCK + within).squeeze(1).clamp_max(vocab - 1)


class RowGenerators:
    """One torch.Generator per row of a batch, for samplers whose rows must not share randomness.

    With one shared generator a row's draws depend on how many rows came before it in the batch;
    with one generator per row they depend on that row's generator alone, whoever else is in the
    batch (DP-PPO needs this: a prompt's rollouts must not change when another prompt joins or
    leaves the Poisson batch). ``select`` follows the batch when finished rows leave it.
    """

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    @classmethod
    def from_seeds(cls, seeds) -> RowGenerators:
        return cls([torch.Generator().manual_seed(int(s)) for s in seeds])

    def select(self, keep: torch.Tensor) -> RowGenerators:
        return RowGenerators([self.generators[i] for i in keep.tolist()])

    def uniforms(self, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows), 1] float64 uniforms, one from each listed row's own generator."""
        return torch.cat([torch.rand(1, 1, generator=self.generators[r], dtype=torch.float64) for r in rows.tolist()])


def _uniforms(generator, rows: torch.Tensor) -> torch.Tensor:
    if isinstance(generator, RowGenerators):
        return generator.uniforms(rows).to(rows.device)
    return torch.rand(rows.numel(), 1, generator=generator, dtype=torch.float64, device=rows.device)


def nucleus_sample(logits: torch.Tensor, top_p: float, temperature: float,
                   generator: torch.Generator | RowGenerators) -> torch.Tensor:
    """One token per row of ``logits`` [rows, vocab] from the temperature-scaled nucleus.

    Rejection sampling: draw from the full distribution (``inverse_cdf``) and accept the token
    when it is in the nucleus, i.e. when the tokens strictly more likely than it hold less than
    ``top_p``. Conditioning a draw from p
    on landing in the nucleus S gives p restricted to S, renormalised: the nucleus distribution,
    with no sort of the vocabulary. A draw is accepted with probability p(S) >= top_p; rows still
    rejected after REJECTION_ROUNDS use the exact sort-based path (``nucleus``). ``generator`` is
    one torch.Generator for the batch, or a ``RowGenerators`` (each row draws from its own).
    """
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
    probs = torch.softmax(scaled, dim=-1)
    token = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    todo = torch.arange(probs.shape[0], device=probs.device)
    for _ in range(REJECTION_ROUNDS if top_p < 1.0 else 1):
        sub = probs if todo.numel() == probs.shape[0] else probs[todo]
        u = _uniforms(generator, todo)
        drawn = inverse_cdf(sub, u)
        p_drawn = sub.gather(1, drawn[:, None])
        more_likely = torch.where(sub > p_drawn, sub, torch.zeros((), device=probs.device)).sum(-1)
        accepted = ((more_likely < top_p) | (top_p >= 1.0)) & (p_drawn[:, 0] > 0)
        token[todo[accepted]] = drawn[accepted]
        todo = todo[~accepted]
        if todo.numel() == 0:
            return token
    p, ids = nucleus(probs[todo], top_p)
    if isinstance(generator, RowGenerators):
        token[todo] = ids.gather(1, inverse_cdf(p, _uniforms(generator, todo))[:, None]).squeeze(1)
    else:
        token[todo] = ids.gather(1, torch.multinomial(p, 1, generator=generator)).squeeze(1)
    return token


def next_token_logits(model, input_ids: torch.Tensor, cache: Cache, position_ids=None,
                      attention_mask=None) -> torch.Tensor:
    """[rows, vocab] logits of the last position, the output projection done in vocabulary slices."""
    hidden = model.model(input_ids=input_ids, past_key_values=cache, position_ids=position_ids,
                         attention_mask=attention_mask, use_cache=True).last_hidden_state[:, -1]
    weight, bias = model.lm_head.weight, model.lm_head.bias
    logits = hidden.new_empty(hidden.shape[0], weight.shape[0])
    for start in range(0, weight.shape[0], VOCAB_SLICE):
        end = start + VOCAB_SLICE
        logits[:, start:end] = torch.nn.functional.linear(hidden, weight[start:end],
                                                          None if bias is None else bias[start:end])
    return logits


def pick(logits: torch.Tensor, top_p: float, temperature: float, generator: torch.Generator | RowGenerators) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else the temperature-scaled nucleus."""
    return logits.argmax(-1) if temperature == 0 else nucleus_sample(logits, top_p, temperature, generator)


def _common_prefix(prompts: list[list[int]]) -> int:
    first, length = prompts[0], min(len(p) for p in prompts)
    for p in prompts[1:]:
        length = next((i for i in range(length) if p[i] != first[i]), length)
    return length


def _prefill_one(model, prompt_ids, n: int, capacity: int, device):
    """The prompt run once at batch 1, its cache and logits broadcast to ``n`` rows; no padding, so
    no attention mask: (cache, logits [n, vocab], attention mask None, next positions [n])."""
    layers = [PreallocatedLayer(len(prompt_ids) + capacity) for _ in range(model.config.num_hidden_layers)]
    cache = Cache(layers=layers)
    logits = next_token_logits(model, torch.tensor([prompt_ids], device=device), cache)
    for layer in layers:
        layer.broadcast(n)
    return cache, logits.expand(n, -1), None, torch.full((n,), len(prompt_ids), device=device)


def _prefill_batch(model, prompts: list[list[int]], pad_id: int, capacity: int, device):
    """The prompts' common prefix run once at batch 1 and broadcast (every row keeps at least one
    token of its own), then the rest of each prompt left-padded after it, with the attention mask
    and per-row positions: (cache, logits [rows, vocab], attention mask [rows, columns so far],
    next positions [rows])."""
    n = len(prompts)
    shared = min(min(len(p) for p in prompts) - 1, _common_prefix(prompts))
    suffixes = [p[shared:] for p in prompts]
    width = max(len(p) for p in suffixes)
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    mask = torch.ones((n, shared + width), dtype=torch.long, device=device)
    mask[:, shared:] = 0
    for i, p in enumerate(suffixes):
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        mask[i, shared + width - len(p):] = 1
    layers = [PreallocatedLayer(shared + width + capacity) for _ in range(model.config.num_hidden_layers)]
    cache = Cache(layers=layers)
    if shared:
        next_token_logits(model, torch.tensor([prompts[0][:shared]], device=device), cache)
        for layer in layers:
            layer.broadcast(n)
    logits = next_token_logits(model, ids, cache, ((mask.cumsum(1) - 1).clamp_min(0))[:, shared:], mask)
    return cache, logits, mask, mask.sum(1)


@torch.inference_mode()
def sample(model, prompts: list[int] | list[list[int]], n: int = 1, *, eos_id: int, max_new_tokens: int,
           top_p: float, temperature: float, generator: torch.Generator | RowGenerators, pad_id: int = 0,
           on_tokens=None) -> list[list[int]]:
    """Token ids of continuations (prompt excluded, ending with EOS unless cut at ``max_new_tokens``);
    deterministic for a given ``generator`` state; temperature 0 is greedy.

    ``prompts`` is ONE prompt (a list of token ids): ``n`` continuations of it, the prompt run once
    (``_prefill_one``); or a BATCH of prompts (a list of such lists, of equal or unequal lengths):
    ``n`` continuations of each, rows prompt by prompt (row ``i * n + j`` is prompt i's j-th), each
    row prefilled after the batch's common prefix, left-padded with ``pad_id`` under an attention
    mask (``_prefill_batch``; any id will do: padding is never attended to). A batch of one prompt
    is still a batch: ``sample(m, p, 4)`` and ``sample(m, [p], 4)`` draw from the same distribution
    but round differently (the latter prefills p's last token per row).
    ``on_tokens(k)`` is called after each step with the number of tokens produced (progress).
    """
    device = next(model.parameters()).device
    if len(prompts) == 0:
        raise ValueError("sample needs a prompt, or a batch of at least one prompt")
    if isinstance(prompts[0], numbers.Integral):
        rows = n
        cache, logits, mask, next_position = _prefill_one(model, prompts, n, max_new_tokens, device)
    else:
        repeated = [p for p in prompts for _ in range(n)]
        rows = len(repeated)
        cache, logits, mask, next_position = _prefill_batch(model, repeated, pad_id, max_new_tokens, device)
    index = torch.arange(rows, device=device)  # original index of each live row
    out = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    live = torch.ones(rows, dtype=torch.bool, device=device)  # in the current (uncompacted) batch
    for step in range(max_new_tokens):
        token = pick(logits, top_p, temperature, generator)
        active = live.nonzero().squeeze(1)
        out[index[active], step] = token[active]
        lengths[index[active]] += 1
        live &= token != eos_id
        if on_tokens:
            on_tokens(int(active.numel()))
        if not live.any() or step == max_new_tokens - 1:
            break
        if (~live).sum() >= COMPACT_SHARE * live.numel():
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            index, token, live, next_position = index[keep], token[keep], live[keep], next_position[keep]
            if mask is not None:
                mask = mask[keep]
            if isinstance(generator, RowGenerators):
                generator = generator.select(keep)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = next_token_logits(model, token[:, None], cache, next_position[:, None], mask)
        next_position = next_position + 1
    return [out[i, :lengths[i]].tolist() for i in range(rows)]
