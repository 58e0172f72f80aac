"""The reward model's features: unit length for both backbones (the |phi_c - phi_r| <= 2 bound the
clip norm is set against), one vector per exchange in input order, and a save/load round trip."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dpinstruct.rl.preference_reward import Backbone, PreferenceReward

PROMPTS = ["How do I make tea?", "Tell me a joke.", "What is 2+2?"]
ANSWERS = ["Boil water, add the leaves, wait three minutes.", "No.", "4"]


@pytest.fixture
def models(tmp_path, monkeypatch, generator_dir, embedder_dir):
    monkeypatch.chdir(tmp_path)
    Path("data/models").mkdir(parents=True)
    os.symlink(generator_dir, "data/models/generator")
    os.symlink(embedder_dir, "data/models/embedder")


@pytest.mark.parametrize("kind, dim", [("embedder", 384), ("generator", 576)])
def test_features_are_unit_length_and_per_exchange(models, kind, dim):
    backbone = Backbone.from_params({"rlhf": {"features": {"backbone": kind, "max_seq_length": 64, "batch_size": 2}}})
    phi = backbone.features(PROMPTS, ANSWERS)
    assert phi.shape == (3, dim)
    np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1, atol=1e-5)
    # batched (padded) and one at a time agree: a comparison's features depend on it alone
    alone = np.stack([backbone.features([p], [a])[0] for p, a in zip(PROMPTS, ANSWERS)])
    np.testing.assert_allclose(phi, alone, atol=1e-4)
    assert np.linalg.norm(phi[0] - phi[1]) <= 2


def test_saved_model_scores_as_before(models, tmp_path):
    backbone = Backbone.from_params({"rlhf": {"features": {"backbone": "embedder", "max_seq_length": 64,
                                                           "batch_size": 2}}})
    weight = np.random.default_rng(0).normal(size=384).astype(np.float32)
    PreferenceReward(backbone, weight).save(tmp_path / "rm")
    loaded = PreferenceReward.load(tmp_path / "rm")
    assert loaded.backbone.kind == "embedder"
    np.testing.assert_allclose(loaded.scores(PROMPTS, ANSWERS), backbone.features(PROMPTS, ANSWERS) @ weight,
                               rtol=1e-5)
