"""DP-Adam internals on the real base model: per-sample gradients, the DP step, the sampler; the exact
clipping semantics on a one-layer linear model whose per-example gradients are known by hand."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from dpinstruct.io.settings.privacy import Randomness
from dpinstruct.models.loading import load_generator
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.training import dp_adam as D

TEXTS = ["How do I bake bread?", "Write a haiku about the sea and the wind at night.",
         "What is 2+2?", "Explain the difference between OpenCL and CUDA for GPU programming."]
PROMPT = "<|im_start|>user\n"


def keyed(purpose="noise"):
    return DPRandom.for_purpose(purpose, "test", privacy=Randomness(secure_mode=False))


@pytest.fixture(scope="module")
def lora(tiny_generator_dir):
    torch.manual_seed(0)
    model, tokenizer = load_generator(tiny_generator_dir)
    # init_lora_weights=False: random B, so that the gradients of A are not all zero
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False)
    return get_peft_model(model, config), tokenizer


def batch_of(tokenizer, texts, max_len=64):
    examples, prompt_len, skipped = D.build_examples(tokenizer, texts, PROMPT, max_len)
    assert skipped == 0
    return D.collate(examples, prompt_len, tokenizer.pad_token_id)


def per_sample_and_loop(lora, texts, loop_padded: bool):
    model, tokenizer = lora
    model = copy.deepcopy(model)
    dp = D.DPAdam(model, lr=1e-3, noise_multiplier=0.0, clip_norm=float("inf"), expected_batch_size=4, noise=keyed())
    batch = batch_of(tokenizer, texts)
    D.per_example_loss(dp.model, batch).mean().backward()
    params = [p for p in dp.model.parameters() if p.requires_grad]
    per_sample = torch.cat([p.grad_sample.detach().flatten(1) for p in params], dim=1)  # (B, n_lora)
    dp.optimizer.zero_grad()
    loop = []
    for i, text in enumerate(texts):
        for p in params:
            p.grad = None
        # the row exactly as in the batch (padding kept), or the example alone without padding
        single = {k: v[i: i + 1] for k, v in batch.items()} if loop_padded else batch_of(tokenizer, [text])
        D.per_example_loss(model, single).sum().backward()
        loop.append(torch.cat([p.grad.flatten() for p in params]))
    return per_sample, torch.stack(loop)


def test_per_sample_gradients_equal_a_per_example_loop(lora):
    per_sample, loop = per_sample_and_loop(lora, TEXTS, loop_padded=True)
    rel = (per_sample - loop).norm(dim=1) / loop.norm(dim=1)
    assert (rel < 1e-4).all(), rel


def test_padding_to_the_micro_batch_does_not_change_gradients(lora):
    # Unpadded single examples take other fp32 kernels (no attention mask), hence a looser bound.
    per_sample, loop = per_sample_and_loop(lora, TEXTS, loop_padded=False)
    rel = (per_sample - loop).norm(dim=1) / loop.norm(dim=1)
    assert (rel < 1e-3).all(), rel


def split_in_two(tokenizer, texts):
    examples, prompt_len, _ = D.build_examples(tokenizer, texts, PROMPT, 64)
    lengths = np.array([len(e) for e in examples])
    micro = [D.collate([examples[i] for i in b], prompt_len, tokenizer.pad_token_id)
             for b in D.micro_batches(np.arange(len(texts)), lengths, token_budget=2 * lengths.max())]
    assert len(micro) == 2
    return micro


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def test_zero_noise_no_clipping_equals_plain_adam(lora):
    model, tokenizer = lora
    plain, private = copy.deepcopy(model), copy.deepcopy(model)
    opt = torch.optim.Adam(trainable(plain), lr=1e-3)
    dp = D.DPAdam(private, lr=1e-3, noise_multiplier=0.0, clip_norm=float("inf"), expected_batch_size=4, noise=keyed())
    seen = []
    dp.optimizer.attach_step_hook(lambda o: seen.append(torch.cat([p.grad.flatten() for p in o.params])))

    # Step 1, the same padded batch on both paths: same gradient, same Adam step.
    opt.zero_grad()
    D.per_example_loss(plain, batch_of(tokenizer, TEXTS)).mean().backward()
    plain_grad = torch.cat([p.grad.flatten() for p in trainable(plain)])
    opt.step()
    dp.step([batch_of(tokenizer, TEXTS)])
    assert (seen[0] - plain_grad).norm() / plain_grad.norm() < 1e-5
    after_plain = torch.cat([p.detach().flatten() for p in trainable(plain)])
    after_dp = torch.cat([p.detach().flatten() for p in trainable(private)])
    # Adam's first step is lr * g / (|g| + 1e-8): where |g| is near its eps, summation-order noise
    # in g moves the step, so compare the coordinates with a real gradient.
    real = plain_grad.abs() > 1e-6
    assert real.float().mean() > 0.8  # most coordinates are compared (0.89 on the tiny model, 0.9+ on the real one)
    assert torch.allclose(after_plain[real], after_dp[real], atol=1e-7, rtol=0)

    # Step 2, the DP path splits the batch into two length-sorted micro-batches: it accumulates
    # them into ONE optimizer step whose gradient equals the plain batch gradient.
    opt.zero_grad()
    D.per_example_loss(plain, batch_of(tokenizer, TEXTS[::-1])).mean().backward()
    plain_grad = torch.cat([p.grad.flatten() for p in trainable(plain)])
    dp.step(split_in_two(tokenizer, TEXTS[::-1]))
    assert len(seen) == 2
    assert (seen[-1] - plain_grad).norm() / plain_grad.norm() < 1e-3  # other fp32 kernels once padding differs


class Linear1(torch.nn.Module):
    """A one-output linear layer whose per-example loss is its output: the gradient of example x is
    exactly (x, 1) (weight, bias) at any weights, so clipping can be checked against a hand computation."""

    def __init__(self, dim: int):
        super().__init__()
        self.out = torch.nn.Linear(dim, 1)

    def forward(self, x):
        return self.out(x).squeeze(-1)


def linear_loss(model, batch):
    return model(batch["x"])


def examples_with_norms(norms, dim: int) -> torch.Tensor:
    """Rows x_i, random directions, such that the gradient (x_i, 1) has norm norms[i] exactly (up to fp32)."""
    rng = np.random.default_rng(7)
    rows = []
    for n in norms:
        u = rng.normal(size=dim)
        rows.append(u / np.linalg.norm(u) * np.sqrt(n * n - 1.0))
    return torch.tensor(np.array(rows), dtype=torch.float32)


def replayed_noise(params, std: float) -> torch.Tensor:
    """The noise DP-Adam draws from keyed(), replayed: one normal() per parameter, in the optimizer's order."""
    stream = keyed()
    return torch.cat([torch.from_numpy(stream.normal(tuple(p.shape), std)).flatten() for p in params]).float()


def test_clipping_scales_each_example_to_exactly_c_and_noise_is_the_keyed_stream():
    # Clipping is g * min(1, C / |g|): an example above C is scaled to norm C exactly in its own
    # direction, one at or below C is left alone, and the step is (sum of clipped + keyed noise) / B.
    # An upper bound alone would pass a clip to C/2 or a zeroed gradient; this pins the value.
    dim, clip, sigma, expected = 4096, 4.0, 0.5, 8.0
    norms = [3 * clip, 1.5 * clip, clip, 0.5 * clip, 1.0]  # the last is the bias alone (x = 0)
    x = examples_with_norms(norms, dim)
    grads = torch.cat([x, torch.ones(len(x), 1)], dim=1)  # (x_i, 1): weight then bias, the optimizer's order
    torch.manual_seed(0)
    base = Linear1(dim)
    # the hand gradient is the model's true per-example gradient (plain autograd, no opacus)
    for row, g in zip(x, grads):
        base.zero_grad()
        base(row[None]).sum().backward()
        assert torch.allclose(torch.cat([p.grad.flatten() for p in base.parameters()]), g)
    assert torch.allclose(grads.norm(dim=1), torch.tensor(norms), rtol=1e-6)
    clipped = torch.stack([g * min(1.0, clip / n) for g, n in zip(grads, norms)])

    def dp_adam(noise_multiplier):
        dp = D.DPAdam(copy.deepcopy(base), lr=1e-3, noise_multiplier=noise_multiplier, clip_norm=clip,
                      expected_batch_size=expected, noise=keyed())
        seen = []
        dp.optimizer.attach_step_hook(lambda o: seen.append(torch.cat([p.grad.flatten() for p in o.params]) * expected))
        return dp, seen

    # Each example alone (one row per logical step, no noise): the gradient is linear, so Adam's
    # moves between steps leave it unchanged.
    dp, seen = dp_adam(0.0)
    for i in range(len(x)):
        assert dp.step([{"x": x[i: i + 1]}], loss_fn=linear_loss).batch_size == 1
        got, g = seen[i], grads[i]
        if norms[i] > clip:
            assert got.norm().item() == pytest.approx(clip, rel=1e-5), f"example {i}: |g| {norms[i]} -> {got.norm()}"
            assert torch.allclose(got, g * (clip / g.norm()), rtol=1e-5, atol=1e-7), f"example {i} changed direction"
        else:
            assert torch.allclose(got, g, rtol=1e-5, atol=1e-7), f"example {i} (|g| {norms[i]} <= C) was altered"

    # All five in one logical step of two micro-batches, with noise sigma C: the summed update is
    # the hand sum of the clipped gradients plus the keyed noise, replayed, divided by B.
    dp, seen = dp_adam(sigma)
    micro = [{"x": x[:3]}, {"x": x[3:]}]
    assert dp.step(micro, loss_fn=linear_loss).batch_size == len(x)
    noise = replayed_noise(dp.optimizer.params, sigma * clip)
    assert len(seen) == 1
    assert torch.allclose(seen[0], clipped.sum(0) + noise, rtol=1e-5, atol=1e-5)
    # the clipping is doing something here: the clipped sum is not the raw sum
    assert (clipped.sum(0) - grads.sum(0)).norm() > clip

    # An empty Poisson batch: the update is the noise alone, N(0, (sigma C)^2) per coordinate.
    dp, seen = dp_adam(sigma)
    assert dp.step([], loss_fn=linear_loss).batch_size == 0
    assert torch.allclose(seen[0], replayed_noise(dp.optimizer.params, sigma * clip), rtol=1e-6, atol=1e-7)
    assert seen[0].std().item() == pytest.approx(sigma * clip, rel=0.05)  # 4097 coordinates: ~1.1% sd


def test_empty_poisson_batch_is_a_noise_only_step(lora):
    model, _ = lora
    model = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    dp = D.DPAdam(model, lr=1e-3, noise_multiplier=1.0, clip_norm=0.5, expected_batch_size=4, noise=keyed())
    assert dp.step([]).batch_size == 0
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


def test_poisson_sampler_sizes_vary_with_mean_qn():
    random, n, q = keyed("poisson"), 1000, 0.05
    sizes = np.array([len(D.poisson_sample(random, n, q)) for _ in range(2000)])
    assert abs(sizes.mean() - q * n) < 1.0
    assert sizes.std() == pytest.approx(np.sqrt(n * q * (1 - q)), rel=0.1)
    assert len(set(sizes)) > 10


def test_micro_batches_respect_the_token_budget_and_cover_each_index_once():
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 65, size=200)
    idx = rng.choice(200, 120, replace=False)
    batches = D.micro_batches(idx, lengths, token_budget=256)
    assert sorted(np.concatenate(batches).tolist()) == sorted(idx.tolist())
    for b in batches:
        assert len(b) * lengths[b].max() <= max(256, lengths[b].max())
    assert D.micro_batches(np.array([], dtype=int), lengths, 256) == []


def test_collate_masks_prompt_and_padding(lora):
    _, tokenizer = lora
    batch = batch_of(tokenizer, ["Hi there, how are you?", "Yo"])
    prompt_len = len(tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    assert (batch["labels"][:, :prompt_len] == D.IGNORE).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == D.IGNORE).all()
    last = batch["attention_mask"][1].sum() - 1
    assert batch["labels"][1, last] == tokenizer.eos_token_id


def per_example_grads(model, tokenizer, texts):
    """Each example's LoRA gradient, computed alone (no opacus): (n, n_lora)."""
    params, out = trainable(model), []
    for text in texts:
        for p in params:
            p.grad = None
        D.per_example_loss(model, batch_of(tokenizer, [text])).sum().backward()
        out.append(torch.cat([p.grad.flatten() for p in params]))
    for p in params:
        p.grad = None
    return torch.stack(out)


def test_each_example_is_clipped_alone_and_divided_by_the_expected_batch(lora):
    # 3 examples realised against an expected batch of 8: the step must be sum_i clip(g_i) / 8,
    # not a mean over the 3 nor anything that mixes examples before clipping.
    model, tokenizer = lora
    texts, expected = TEXTS[:3], 8.0
    singles = per_example_grads(copy.deepcopy(model), tokenizer, texts)
    norms = singles.norm(dim=1)
    clip = float(norms.median())  # one example above C, one at it, one below
    want = sum(g * min(1.0, clip / float(n)) for g, n in zip(singles, norms)) / expected
    dp = D.DPAdam(copy.deepcopy(model), lr=1e-3, noise_multiplier=0.0, clip_norm=clip, expected_batch_size=expected,
                  noise=keyed())
    seen = []
    dp.optimizer.attach_step_hook(lambda o: seen.append(torch.cat([p.grad.flatten() for p in o.params])))
    assert dp.step([batch_of(tokenizer, texts)]).batch_size == 3
    # padded rows take other fp32 kernels than single examples, hence 1e-3
    assert (seen[0] - want).norm() / want.norm() < 1e-3
    assert not torch.allclose(seen[0], singles.sum(0) / 3, rtol=1e-2)


def test_noise_is_added_once_per_logical_step_with_the_recorded_std(lora):
    # Two micro-batches make one step: the noise (sigma C / B per coordinate) must be added once,
    # not per micro-batch (which would give sqrt(2) times the std).
    model, tokenizer = lora
    sigma, clip, expected = 0.7, 0.05, 4.0
    micro = split_in_two(tokenizer, TEXTS)
    grads = {}
    for name, noise_multiplier in (("clean", 0.0), ("noisy", sigma)):
        dp = D.DPAdam(copy.deepcopy(model), lr=1e-3, noise_multiplier=noise_multiplier, clip_norm=clip,
                      expected_batch_size=expected, noise=keyed())
        dp.optimizer.attach_step_hook(lambda o, n=name: grads.setdefault(n, torch.cat([p.grad.flatten() for p in o.params])))
        dp.step(micro)
    noise = (grads["noisy"] - grads["clean"]).double()
    assert noise.std().item() == pytest.approx(sigma * clip / expected, rel=0.01)  # ~460k coordinates
    assert abs(noise.mean().item()) < 3 * sigma * clip / expected / noise.numel() ** 0.5


def test_no_training_row_loses_its_eos(lora):
    _, tokenizer = lora
    long = "word " * 200
    examples, prompt_len, skipped = D.build_examples(tokenizer, [TEXTS[0], long, TEXTS[1]], PROMPT, 64)
    assert skipped == 1 and len(examples) == 2
    assert all(e[-1] == tokenizer.eos_token_id and len(e) <= 64 for e in examples)
    with pytest.raises(ValueError, match="no room"):
        D.build_examples(tokenizer, TEXTS, PROMPT, prompt_len + 1)
