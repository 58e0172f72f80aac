"""The fast sampler draws from the same distribution as transformers' generate: same nucleus, same
next-token logits through the preallocated, compacting KV cache, same greedy path; and its one
decoder gives every row of a batch of prompts (equal or unequal lengths, left-padded) the tokens of
its prompt decoded alone."""
from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import Cache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from dpinstruct.models import sampler
from dpinstruct.models.loading import load_generator


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_generator_dir):
    return load_generator(tiny_generator_dir)


@pytest.mark.parametrize("top_p,temperature", [(0.95, 1.0), (0.9, 0.7), (0.5, 1.3), (1.0, 1.0)])
def test_nucleus_matches_transformers_warpers(top_p, temperature):
    g = torch.Generator().manual_seed(0)
    # Rows from peaked to nearly flat (nuclei of 1 to ~46,000 tokens).
    scale = torch.tensor([0.05, 0.3, 1.0, 3.0, 10.0]).repeat(8)[:, None]
    logits = torch.randn(40, 49152, generator=g) * scale
    reference = torch.softmax(TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone())), -1)
    p, ids = sampler.nucleus(torch.softmax(logits / temperature, -1), top_p)
    ours = torch.zeros_like(logits).scatter(1, ids, p)
    # Same nucleus except, at most, the one boundary token whose inclusion depends on float
    # rounding (HF sums the tail ascending, we sum the head descending); the distributions then
    # differ by less than 1e-4 in total variation.
    assert ((ours > 0) != (reference > 0)).sum(-1).max() <= 1
    assert ((ours > 0) != (reference > 0)).any(-1).float().mean() <= 0.1
    assert (ours - reference).abs().sum(-1).max() / 2 < 1e-4


@pytest.mark.parametrize("top_p,temperature", [(0.95, 1.0), (0.6, 0.8), (0.3, 1.5), (1.0, 1.0)])
def test_sampled_frequencies_follow_the_transformers_nucleus(top_p, temperature):
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 300, generator=g) * torch.tensor([[0.5], [2.0], [4.0]])
    expected = torch.softmax(TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone())), -1)
    draws = 30000
    tokens = sampler.nucleus_sample(logits.repeat_interleave(draws, 0), top_p, temperature, g).view(3, draws)
    for row in range(3):
        counts = torch.bincount(tokens[row], minlength=300).double()
        support = expected[row] > 0
        assert counts[~support].sum() == 0  # never a token outside the nucleus
        f_exp = expected[row][support].double() * draws
        # pool rare tokens so the chi-square approximation holds
        rare = f_exp < 5
        obs = torch.cat([counts[support][~rare], counts[support][rare].sum(0, keepdim=True)])
        exp = torch.cat([f_exp[~rare], f_exp[rare].sum(0, keepdim=True)])
        if exp[-1] == 0:
            obs, exp = obs[:-1], exp[:-1]
        assert stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue > 1e-4


def test_inverse_cdf_picks_the_token_whose_interval_holds_u():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.25, 0.25] + [0.0] * 600])
    for u, token in ((0.0, 1), (0.49, 1), (0.51, 3), (0.74, 3), (0.76, 4), (0.999999, 4)):
        assert sampler.inverse_cdf(probs, torch.tensor([[u]], dtype=torch.float64)).item() == token


def test_cached_logits_equal_full_forward_after_compaction(model_and_tokenizer):
    model, _ = model_and_tokenizer
    g = torch.Generator().manual_seed(1)
    prompt = torch.tensor([[1, 4093, 198]])
    seq = torch.randint(100, 5000, (4, 9), generator=g)
    layers = [sampler.PreallocatedLayer(3 + 9) for _ in range(model.config.num_hidden_layers)]
    cache = Cache(layers=layers)
    with torch.inference_mode():
        sampler.next_token_logits(model, prompt, cache)
        for layer in layers:
            layer.broadcast(4)
        for t in range(9):
            if t == 5:  # two rows finished: drop them from the batch mid-way
                keep = torch.tensor([0, 2])
                cache.batch_select_indices(keep)
                seq = seq[keep]
            logits = sampler.next_token_logits(model, seq[:, t:t + 1], cache, torch.full((len(seq), 1), 3 + t))
        full = model(torch.cat([prompt.expand(len(seq), -1), seq], 1)).logits[:, -1]
    assert torch.allclose(logits, full, atol=1e-4)


def test_greedy_limit_equals_transformers_greedy_generate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    # top_p -> 0 keeps only the most likely token: the sampler must then follow greedy decoding.
    tokens = sampler.sample(model, prompt, 3, eos_id=tokenizer.eos_token_id, max_new_tokens=20, top_p=1e-9,
                            temperature=1.0, generator=torch.Generator().manual_seed(0))
    greedy = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)[0, len(prompt):]
    expected = greedy.tolist()
    if tokenizer.eos_token_id in expected:
        expected = expected[:expected.index(tokenizer.eos_token_id) + 1]
    assert tokens == [expected] * 3


def test_sampling_is_deterministic_for_a_seed_and_changes_with_it(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]

    def draw(seed):
        return sampler.sample(model, prompt, 6, eos_id=tokenizer.eos_token_id, max_new_tokens=12, top_p=0.95,
                               temperature=1.0, generator=torch.Generator().manual_seed(seed))

    first = draw(0)
    assert draw(0) == first and draw(1) != first
    assert all(1 <= len(t) <= 12 for t in first)
    assert all(t[-1] == tokenizer.eos_token_id or len(t) == 12 for t in first)  # stops at EOS



def mixed_prompts(tokenizer) -> list[list[int]]:
    """Prompts of different lengths: two chat prompts sharing the template's prefix and two of one
    length (5 tokens, as DP-PPO's) sharing nothing with them."""
    from dpinstruct.alignment.chat import chat_ids, user

    chats = [chat_ids(tokenizer, user(t), generation_prompt=True) for t in ("Name three rivers.", "What is a tuple?")]
    plain = [tokenizer(t, add_special_tokens=False)["input_ids"][:5] for t in ("This movie was a total", "I went to see it")]
    return chats + plain


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_each_row_of_a_batch_of_prompts_decodes_as_its_prompt_alone(model_and_tokenizer, temperature):
    """With one generator per row, each row of a batch of prompts of unequal lengths (left-padded
    under the attention mask, each row counting its own positions) and of a batch of equal-length
    prompts (no padding) gets the tokens of its prompt decoded alone (the one-prompt path, which
    never pads). The tiny model's near-uniform distribution makes every draw hinge on the logits:
    attending to the padding changes the tokens of most rows."""
    model, tokenizer = model_and_tokenizer
    prompts = mixed_prompts(tokenizer)
    kw = {"eos_id": tokenizer.eos_token_id, "max_new_tokens": 6, "top_p": 1.0, "temperature": temperature,
          "pad_id": tokenizer.pad_token_id}
    batch = sampler.sample(model, prompts, generator=sampler.RowGenerators.from_seeds(range(4)), **kw)
    alone = [sampler.sample(model, p, 1, generator=sampler.RowGenerators.from_seeds([i]), **kw)[0]
             for i, p in enumerate(prompts)]
    assert batch == alone
    assert sampler.sample(model, prompts[2:], generator=sampler.RowGenerators.from_seeds([2, 3]), **kw) == alone[2:]
    if temperature == 0:  # greedy: a padded row is also transformers' greedy decoding of its prompt
        for p, row in zip(prompts[:2], batch):
            greedy = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=6,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            assert row == greedy[0, len(p):].tolist()[:len(row)]


@pytest.mark.parametrize("one_prompt", [True, False])
def test_row_generators_follow_their_rows_when_finished_rows_leave_the_batch(model_and_tokenizer, one_prompt):
    """A row that ends early leaves the batch (the cache is compacted); every other row must keep
    drawing from its own generator, in both paths. The end is forced: EOS is the token row 1 drew at
    step 2 of a run without one, so row 1 stops there and the others go on after the compaction."""
    model, tokenizer = model_and_tokenizer
    prompts, seeds = mixed_prompts(tokenizer)[:3], [11, 12, 13]
    kw = {"max_new_tokens": 6, "top_p": 1.0, "temperature": 1.0, "pad_id": tokenizer.pad_token_id}

    def run(eos_id: int, rows: list[int]) -> list[list[int]]:
        batch = prompts[0] if one_prompt else [prompts[seeds.index(s)] for s in rows]
        return sampler.sample(model, batch, len(rows) if one_prompt else 1, eos_id=eos_id,
                              generator=sampler.RowGenerators.from_seeds(rows), **kw)

    eos = run(-1, seeds)[1][2]
    ended = run(eos, seeds)
    assert len(ended[1]) == 3 and max(len(t) for t in ended) == 6  # row 1 left the batch; the others went on
    assert ended == [run(eos, [s])[0] for s in seeds]
