"""DP-PPO's privacy mechanics on the real student: one prompt is one clipped example however many
rollouts it has, the noise goes in once per logical step with the recorded std, the group
baseline reads only the prompt's own rollouts, a prompt's rollouts do not depend on the other
prompts of its batch, and the trunk split computes the same log-probabilities as a full forward."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from dpinstruct.io.settings.models import Lora
from dpinstruct.io.settings.privacy import Randomness
from dpinstruct.models.loading import load_generator
from dpinstruct.models.lora import lora_model
from dpinstruct.models.trunk import first_adapted_layer
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.rl import ppo
from dpinstruct.training.dp_adam import DPAdam

LORA = Lora(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], layers=[28, 29])
SETTINGS = ppo.PPOSettings(rollouts=4, new_tokens=6, temperature=1.0, top_p=1.0, kl_coef=0.05, clip_range=0.2)
TEXTS = ["This movie was a total", "I went to see this film", "The acting in this one", "Nothing about the plot of this film"]
START = 28  # LORA's first layer


def generators(keys, k=SETTINGS.rollouts, seed=0):
    return ppo.rollout_seeds(ppo.public_seed(seed), keys, k)


@pytest.fixture(scope="module")
def policy(tiny_generator_dir):
    torch.manual_seed(0)
    model, tokenizer = lora_model(load_generator(tiny_generator_dir), LORA)
    # a non-zero adapter, so that the policy and the reference differ
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model, tokenizer


def batch(policy, n_prompts: int, seed: int = 0):
    model, tokenizer = policy
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"][:5] for t in TEXTS]
    ids, hidden = ppo.rollouts_and_trunk(model, prompts[:n_prompts], SETTINGS, generators(TEXTS[:n_prompts], seed=seed),
                                         START)
    old, ref = ppo.old_and_reference_logprobs(model, hidden, ids, 5, START)
    kl = ppo.kl_to_reference(old, ref).numpy()
    rewards = np.random.default_rng(seed).normal(size=len(ids))
    adv = ppo.advantages(rewards, kl, SETTINGS.rollouts, SETTINGS.kl_coef)
    return {"input_ids": ids, "hidden": hidden, "old_logp": old, "advantage": torch.tensor(adv, dtype=torch.float32),
            "unit": torch.arange(n_prompts).repeat_interleave(SETTINGS.rollouts)}


def applied_gradient(policy, micro, *, clip, sigma=0.0, expected=1.0, per_unit=True):
    model, _ = policy
    dp = DPAdam(copy.deepcopy(model), lr=1e-3, noise_multiplier=sigma, clip_norm=clip, expected_batch_size=expected,
                noise=DPRandom.for_purpose("test", "ppo", privacy=Randomness(secure_mode=False)))
    seen = []
    dp.optimizer.attach_step_hook(lambda o: seen.append(torch.cat([p.grad.flatten() for p in o.params])))
    if not per_unit:
        micro = [{k: v for k, v in m.items() if k != "unit"} for m in micro]
    dp.step(micro, loss_fn=ppo.ppo_loss(SETTINGS.clip_range, 5, START))
    return seen[0].double()


def test_one_prompt_is_one_clipped_example_however_many_rollouts(policy):
    one_prompt = batch(policy, 1)
    clip = 1e-4  # far below any rollout's gradient norm: everything is clipped
    grouped = applied_gradient(policy, [one_prompt], clip=clip)
    assert grouped.norm() <= clip * (1 + 1e-5)
    # clipping each rollout instead would let k rollouts move the update up to k times as far
    per_rollout = applied_gradient(policy, [one_prompt], clip=clip, per_unit=False)
    assert per_rollout.norm() > 1.5 * clip


def test_noise_once_per_logical_step_with_the_recorded_std(policy):
    micro = [batch(policy, 2, seed=1), batch(policy, 2, seed=2)]  # two micro-batches, one step
    micro[1]["unit"] = micro[1]["unit"] + 2
    sigma, clip, expected = 0.8, 0.05, 4.0
    noise = applied_gradient(policy, micro, clip=clip, sigma=sigma, expected=expected) - \
        applied_gradient(policy, micro, clip=clip, expected=expected)
    assert noise.std().item() == pytest.approx(sigma * clip / expected, rel=0.05)  # ~15k coordinates


def test_the_group_baseline_reads_only_the_prompts_own_rollouts():
    rewards = np.array([1.0, 3.0, 10.0, 30.0])
    kl = np.zeros(4)
    adv = ppo.advantages(rewards, kl, 2, 0.1)
    assert adv.tolist() == [-1.0, 1.0, -10.0, 10.0]
    # changing another prompt's rollouts leaves this prompt's advantages alone
    assert ppo.advantages(np.array([1.0, 3.0, -5.0, 99.0]), kl, 2, 0.1)[:2].tolist() == [-1.0, 1.0]
    # the KL penalty shapes the reward before the baseline
    assert ppo.advantages(np.array([1.0, 1.0]), np.array([0.0, 10.0]), 2, 0.1).tolist() == [0.5, -0.5]


def test_rollouts_are_fixed_length_and_seeded(policy):
    model, tokenizer = policy
    prompt = tokenizer("A film about", add_special_tokens=False)["input_ids"]
    r = ppo.rollouts(model, [prompt], SETTINGS, generators(["a"], seed=3))
    a, b = r.ids, ppo.rollouts(model, [prompt], SETTINGS, generators(["a"], seed=3)).ids
    assert r.mask is None and r.width == len(prompt)  # one prompt length and no EOS: unpadded rows
    assert a.shape == (SETTINGS.rollouts, len(prompt) + SETTINGS.new_tokens) and torch.equal(a, b)
    assert (a[:, :len(prompt)] == torch.tensor(prompt)).all()
    assert not torch.equal(a, ppo.rollouts(model, [prompt], SETTINGS, generators(["a"], seed=4)).ids)


def test_a_prompts_rollouts_do_not_depend_on_the_rest_of_its_batch(policy):
    """The sensitivity argument: adding or removing one prompt (the privacy unit) must leave every
    other prompt's continuations, hence their gradients, as they were. With one generator shared
    by the batch (the old sampler), every prompt after the removed one drew different uniforms."""
    model, tokenizer = policy
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"][:5] for t in TEXTS]
    keys = ["r0", "r1", "r2", "r3"]
    k = SETTINGS.rollouts
    full = ppo.rollouts(model, prompts, SETTINGS, generators(keys)).ids
    without_r1 = ppo.rollouts(model, [prompts[i] for i in (0, 2, 3)], SETTINGS,
                              generators([keys[i] for i in (0, 2, 3)])).ids
    assert torch.equal(without_r1, torch.cat([full[:k], full[2 * k:]]))
    reordered = ppo.rollouts(model, prompts[::-1], SETTINGS, generators(keys[::-1])).ids
    assert torch.equal(reordered[:k], full[3 * k:])
    # the same prompt text under another id (another record) gets its own draws
    assert not torch.equal(ppo.rollouts(model, prompts[:1], SETTINGS, generators(["other"])).ids, full[:k])


def test_a_keyed_child_seed_depends_on_its_parts_only():
    stream = DPRandom.for_purpose("dp_ppo/rollouts", "binding", privacy=Randomness(secure_mode=False))
    first = stream.child_seed(3, "train_pos_1", 0)
    stream.uniform(10)  # draws from the stream itself do not move it
    assert stream.child_seed(3, "train_pos_1", 0) == first
    assert len({first, stream.child_seed(3, "train_pos_1", 1), stream.child_seed(4, "train_pos_1", 0),
                stream.child_seed(3, "train_pos_2", 0)}) == 4
    other = DPRandom.for_purpose("dp_ppo/rollouts", "another binding", privacy=Randomness(secure_mode=False))
    assert other.child_seed(3, "train_pos_1", 0) != first
    assert 0 <= first < 2 ** 63


# Float32 tolerances of the trunk split. Both sides compute the same values by different summation
# orders (the recorder: a prefill, then one token per step against the KV cache; `trunk_states`: one
# forward over the finished sequence; other matmul shapes, so other blockings of every sum), so they
# may differ by float32 rounding only: unit roundoff u = 2**-24 (6e-8).
# * The hidden state entering layer START is the end of 28 residual blocks whose sums run over the
#   whole row (RMSNorm divides the row by its RMS, attention and the MLP mix all 576 coordinates, the
#   MLP's down-projection sums 1536 products). Its rounding error therefore scales with the RMS of its
#   row, not with the element's own value: a near-zero element (the failure seen on one CPU: 1.4e-4 off
#   on a value of 0.16, relative 9e-4) sits in a row of RMS ~28, and position 0 carries attention-sink
#   values of ~2e4 (row RMS ~1e3) whose absolute error is ~1e-2. Rounding errors that add up like a
#   random walk give about sqrt(1536 x 28) x u = 1.2e-5 of the row's RMS; measured on one CPU: 1.2e-5
#   between the two paths, 3.1e-5 for either against a float64 forward. TRUNK_TOL is 20 x the estimate.
#   A real error (a position or layer off by one) moves a row by O(1) x its RMS: thousands of times more.
# * A log-probability is z_t - logsumexp(z) over logits of magnitude ~10 from the final normed state,
#   which inherits the trunk's ~1e-5 relative error (two more layers): ~1e-4 at worst. Measured: 1.5e-5
#   from the recorded trunk, 0 from `trunk_states`. LOGP_TOL is absolute, in nats; the adapter moves
#   log-probabilities by > 1e-3 (asserted), so a split that dropped or repeated an adapted layer fails.
TRUNK_TOL = 20 * (1536 * 28) ** 0.5 * 2.0 ** -24  # 2.5e-4, relative to each position's RMS
LOGP_TOL = 2e-4


def assert_close_to_row_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """|actual - expected| <= rel x RMS of ``expected``'s row (last dimension), at every position."""
    assert actual.shape == expected.shape
    scale = expected.double().pow(2).mean(-1, keepdim=True).sqrt()
    worst = ((actual.double() - expected.double()).abs() / scale).amax(-1)
    assert worst.max() <= rel, f"{worst.max():.3g} x the row RMS at (row, position) " \
        f"{tuple(int(i) for i in divmod(int(worst.argmax()), worst.shape[-1]))}, over {rel:.3g}"


def test_the_trunk_split_gives_the_full_forwards_log_probabilities(policy):
    model, _ = policy
    assert first_adapted_layer(model) == START
    recorded = batch(policy, 2)
    ids, hidden = recorded["input_ids"], ppo.trunk_states(model, recorded["input_ids"], START)
    # the trunk recorded while decoding is the trunk of the finished sequences
    assert_close_to_row_scale(recorded["hidden"], hidden, TRUNK_TOL)
    full_old = ppo.policy_logprobs(model, ids, 5)
    with model.disable_adapter():
        full_ref = ppo.policy_logprobs(model, ids, 5)
    # from either trunk (DP-PPO uses the recorded one), the split gives the full forward's values
    for trunk in (hidden, recorded["hidden"]):
        old, ref = ppo.old_and_reference_logprobs(model, trunk, ids, 5, START)
        torch.testing.assert_close(old, full_old, atol=LOGP_TOL, rtol=0)
        torch.testing.assert_close(ref, full_ref, atol=LOGP_TOL, rtol=0)
    assert (old - ref).abs().max() > 1e-3  # the adapter matters, so the check can fail
    # the split leaves the model whole afterwards
    assert len(model.base_model.model.model.layers) == 30


# --- the padded path: prompts of different lengths, answers that end at EOS (RLHF) ---------------

def chat_rollouts(policy, k: int = 2):
    """k answers to chat prompts of three lengths, padded on both sides: EOS is the token the first
    answer drew at step 2 of a run without one, so that answer ends there and the others (almost
    surely) run to ``new_tokens``."""
    from dpinstruct.alignment.chat import chat_ids, user

    model, tokenizer = policy
    prompts = [chat_ids(tokenizer, user(t), generation_prompt=True) for t in ("Name a river.", "What is a tuple?", "Hi")]
    s, keys = dataclasses.replace(SETTINGS, rollouts=k), ["c0", "c1", "c2"]
    eos = ppo.rollouts(model, prompts, s, generators(keys, k)).responses[0][2]
    return prompts, ppo.rollouts(model, prompts, s, generators(keys, k), eos_id=eos, pad_id=tokenizer.pad_token_id)


def test_padded_rollouts_are_scored_as_each_row_alone(policy):
    """Left-padded prompts and right-padded answers: the trunk and the policy's and reference's
    log-probabilities of each answer token are those of the row's own unpadded sequence (a full
    forward), and exactly 0 after the answer's end. Fails if the padding is attended to or the
    answer's end is not masked."""
    model, _ = policy
    prompts, r = chat_rollouts(policy)
    assert r.mask is not None and len(r.responses[0]) == 3 and r.response_mask[0].tolist() == [1.0] * 3 + [0.0] * 3
    assert r.width == max(len(p) for p in prompts)
    hidden = ppo.trunk_states(model, r.ids, START, attention_mask=r.mask)
    old, ref = ppo.old_and_reference_logprobs(model, hidden, r.ids, r.width, START, **r.masks)
    for row, answer in enumerate(r.responses):
        prompt = prompts[row // 2]
        ids = torch.tensor([prompt + answer])
        alone_old = ppo.policy_logprobs(model, ids, len(prompt))[0]
        with model.disable_adapter():
            alone_ref = ppo.policy_logprobs(model, ids, len(prompt))[0]
        torch.testing.assert_close(old[row, :len(answer)], alone_old, atol=LOGP_TOL, rtol=0)
        torch.testing.assert_close(ref[row, :len(answer)], alone_ref, atol=LOGP_TOL, rtol=0)
        assert (old[row, len(answer):] == 0).all() and (ref[row, len(answer):] == 0).all()
    assert (old - ref).abs().max() > 1e-3  # the adapter matters, so the comparison can fail


def test_a_prompts_rollouts_and_losses_are_the_same_padded_or_not(policy):
    """One PPO core for both paths: prompts of one length give unpadded rollouts (no mask); the same
    prompts in a batch with a longer one are left-padded, and their rows keep the same answers,
    log-probabilities and clipped-surrogate losses."""
    model, tokenizer = policy
    short = [tokenizer(t, add_special_tokens=False)["input_ids"][:5] for t in TEXTS[:2]]
    longer = tokenizer(TEXTS[3], add_special_tokens=False)["input_ids"]
    k, rows = SETTINGS.rollouts, 2 * SETTINGS.rollouts
    dense = ppo.rollouts(model, short, SETTINGS, generators(["r0", "r1"]))
    mixed = ppo.rollouts(model, short + [longer], SETTINGS, generators(["r0", "r1", "long"]))
    assert dense.mask is None and dense.masks == {} and mixed.mask is not None and mixed.width == len(longer) > 5
    assert mixed.responses[:rows] == dense.responses and len(mixed.responses) == rows + k
    adv = np.concatenate([np.linspace(-1.0, 1.0, rows), np.ones(k)])
    scores = []
    for r in (dense, mixed):
        hidden = ppo.trunk_states(model, r.ids, START, attention_mask=r.mask)
        old, ref = ppo.old_and_reference_logprobs(model, hidden, r.ids, r.width, START, **r.masks)
        batch = ppo.row_batches(r.ids, hidden, ref, adv[:len(r.ids)], len(r.ids), **r.masks)[0]
        with torch.no_grad():  # the reference as the old policy: ratios off 1 by the adapter, so the clip acts
            loss = ppo.ppo_loss(0.0005, r.width, START)(model, batch)
        scores.append((old[:rows], ref[:rows], loss[:rows]))
    for dense_part, mixed_part in zip(*scores):
        torch.testing.assert_close(mixed_part, dense_part, atol=LOGP_TOL, rtol=0)


def test_the_surrogate_of_padded_rows_averages_over_their_answer_tokens_only():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
    old = logp - torch.tensor([[0.1, -0.5, 0.0], [0.1, -0.5, 0.3]])  # ratios e^0.1, e^-0.5, 1 / e^0.3
    adv, clip = torch.tensor([1.0, -2.0]), 0.2
    ratio = torch.exp(logp - old)
    per_token = torch.minimum(ratio * adv[:, None], ratio.clamp(1 - clip, 1 + clip) * adv[:, None])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss = ppo.clipped_surrogate(logp, old, adv, clip, mask)
    torch.testing.assert_close(loss, torch.stack([-per_token[0, :2].mean(), -per_token[1].mean()]))
    # nothing after a row's end counts; unpadded rows average over every token
    moved = logp.clone()
    moved[0, 2] = 5.0
    assert ppo.clipped_surrogate(moved, old, adv, clip, mask)[0] == loss[0]
    torch.testing.assert_close(ppo.clipped_surrogate(logp, old, adv, clip), -per_token.mean(1))


def test_the_plain_step_is_on_the_mean_loss_over_every_row(policy):
    """``train_step`` (RLHF's update) accumulates over row batches of any sizes the gradient of the
    mean loss over ALL rows: batches of 4 and 2 rows give the one-batch gradient and mean (a mean of
    per-batch means would weigh the 2 rows double)."""
    model, _ = policy
    _, r = chat_rollouts(policy)
    hidden = ppo.trunk_states(model, r.ids, START, attention_mask=r.mask)
    _, ref = ppo.old_and_reference_logprobs(model, hidden, r.ids, r.width, START, **r.masks)
    adv, loss_fn = np.linspace(-1.0, 2.0, len(r.ids)), ppo.ppo_loss(0.2, r.width, START)

    def step(rows: int):
        m = copy.deepcopy(model)
        optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.0)
        total = ppo.train_step(m, optimizer, ppo.row_batches(r.ids, hidden, ref, adv, rows, **r.masks), loss_fn)
        return total, torch.cat([p.grad.flatten() for p in m.parameters() if p.requires_grad])

    (whole, g_whole), (split, g_split) = step(len(r.ids)), step(4)
    assert len(r.ids) == 6 and split == pytest.approx(whole, rel=1e-5)
    with torch.no_grad():
        assert whole == pytest.approx(float(loss_fn(model, ppo.row_batches(r.ids, hidden, ref, adv, 6, **r.masks)[0]).mean()),
                                      rel=1e-5)
    torch.testing.assert_close(g_split, g_whole, rtol=1e-4, atol=1e-7)
    assert g_whole.abs().max() > 0


def test_recording_the_trunk_while_decoding_refuses_padded_rows(policy):
    model, tokenizer = policy
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:2]]  # 6 and 5 tokens
    with pytest.raises(ValueError, match="one length"):
        ppo.rollouts_and_trunk(model, prompts, SETTINGS, generators(["a", "b"]), START)
