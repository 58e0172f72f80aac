"""The Bradley-Terry reward head: its loss against a hand computation, one clipped gradient per
comparison, and that training learns what the data says."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.rl import bradley_terry as bt
from dpinstruct.rl.preference_reward import accuracy
from dpinstruct.training.dp_adam import DPAdam


def stream(name: str) -> DPRandom:
    return DPRandom(hashlib.sha256(name.encode()).digest())


def head_with(weight) -> bt.BradleyTerryHead:
    head = bt.BradleyTerryHead(len(weight))
    with torch.no_grad():
        head.score.weight.copy_(torch.tensor([weight], dtype=torch.float32))
    return head


def test_pair_loss_equals_a_hand_computation_on_three_pairs():
    w = [0.5, -1.0, 2.0]
    deltas = [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [-1.0, 2.0, -0.5]]
    # margins w . delta: 0.5, 1.0, -3.5; loss = log(1 + exp(-margin))
    hand = [math.log(1 + math.exp(-0.5)), math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(3.5))]
    got = bt.pair_loss(head_with(w), {"delta": torch.tensor(deltas)})
    assert got.tolist() == pytest.approx(hand, rel=1e-6)
    # a fresh head prefers nothing: every comparison costs log 2
    fresh = bt.pair_loss(bt.BradleyTerryHead(3), {"delta": torch.tensor(deltas)})
    assert fresh.tolist() == pytest.approx([math.log(2)] * 3)


def test_each_comparison_is_clipped_alone_and_divided_by_the_expected_batch():
    rng = np.random.default_rng(0)
    w = rng.normal(size=8).astype(np.float32)
    deltas = rng.normal(size=(5, 8)).astype(np.float32) * np.array([[0.1], [1], [3], [0.5], [2]], dtype=np.float32)
    # the gradient of -log sigmoid(w . d) in w is -(1 - sigmoid(w . d)) d, one per comparison
    grads = -(1 - 1 / (1 + np.exp(-(deltas @ w))))[:, None] * deltas
    clip, expected = float(np.median(np.linalg.norm(grads, axis=1))), 10.0
    want = sum(g * min(1.0, clip / np.linalg.norm(g)) for g in grads) / expected
    dp = DPAdam(head_with(w.tolist()), lr=1e-3, noise_multiplier=0.0, clip_norm=clip, expected_batch_size=expected,
                noise=stream("noise"))
    seen = []
    dp.optimizer.attach_step_hook(lambda o: seen.append(o.params[0].grad.detach().numpy()[0].copy()))
    result = dp.step([{"delta": torch.from_numpy(deltas)}], loss_fn=bt.pair_loss)
    assert result.batch_size == 5
    np.testing.assert_allclose(seen[0], want, rtol=1e-4, atol=1e-7)  # float32 against float64
    assert not np.allclose(seen[0], grads.sum(0) / expected, rtol=1e-2)  # clipping did act


def test_training_learns_the_preference_in_the_data_and_noise_costs_accuracy():
    # 600 synthetic comparisons whose preference is a fixed direction: the non-private head finds it
    rng = np.random.default_rng(2)
    truth = rng.normal(size=16)
    chosen, rejected = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    swap = (chosen - rejected) @ truth < 0
    chosen[swap], rejected[swap] = rejected[swap].copy(), chosen[swap].copy()
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    chosen, rejected = norm(chosen), norm(rejected)
    train, test = slice(0, 400), slice(400, 600)
    results = {}
    for name, sigma in (("clean", 0.0), ("noisy", 50.0)):
        head = bt.BradleyTerryHead(16)
        s = stream(name)
        dp = DPAdam(head, lr=0.05, noise_multiplier=sigma, clip_norm=1.0, expected_batch_size=40, noise=s)
        bt.train_head(dp, chosen[train] - rejected[train], s, 0.1, range(100))
        results[name] = accuracy(bt.head_weight(head), chosen[test], rejected[test])
    assert results["clean"] >= 0.85, results
    assert results["noisy"] < results["clean"] - 0.1, results
