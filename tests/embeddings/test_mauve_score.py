"""MAUVE with the shared bucketing: its limits, its agreement with mauve-text, and real embeddings."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dpinstruct.embeddings import mauve_score
from dpinstruct.models.loading import load_embedder

REPO_RAW = "data/raw"


def test_identical_histograms_score_one_and_disjoint_near_zero():
    p = np.array([0.2, 0.3, 0.5, 0.0, 0.0, 0.0])
    assert mauve_score.frontier_area(p, p) == pytest.approx(1.0, abs=1e-9)
    q = np.array([0.0, 0.0, 0.0, 0.5, 0.3, 0.2])
    assert mauve_score.frontier_area(p, q) < 0.01
    r = np.array([0.25, 0.25, 0.4, 0.1, 0.0, 0.0])  # partial overlap lands in between
    assert 0.01 < mauve_score.frontier_area(p, r) < 1.0


def test_auto_buckets_follow_mauve_text():
    assert mauve_score.num_buckets(500, 455) == 46
    assert mauve_score.num_buckets(5, 500) == 2
    assert mauve_score.num_buckets(500, 500, 7) == 7
    with pytest.raises(ValueError):
        mauve_score.num_buckets(500, 500, 1)


def test_agrees_with_mauve_text_on_the_same_features():
    # Two Gaussian mixtures with partial overlap; mauve-text quantises with sklearn PCA + its own
    # k-means seed, so the two agree up to the k-means solution, not bit for bit.
    import mauve

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 32)) * 3
    p = centres[rng.integers(0, 4, 400)] + rng.normal(size=(400, 32))
    q = centres[rng.integers(2, 6, 400)] + rng.normal(size=(400, 32))
    ours = mauve_score.mauve(p, q, seeds=(0, 1, 2))["mauve"]
    theirs = np.mean([mauve.compute_mauve(p_features=p, q_features=q, seed=s, verbose=False).mauve for s in (1, 2, 3)])
    assert abs(ours - theirs) < 0.08, (ours, theirs)
    assert 0.05 < ours < 0.9  # partial overlap: neither extreme


@pytest.fixture(scope="module")
def real_embeddings(embedder_dir):
    from tests.conftest import REPO

    model = load_embedder(embedder_dir)
    private = pd.read_json(REPO / "data/raw/chatbot_arena/instructions.jsonl", lines=True).instruction.head(600)
    public = pd.read_json(REPO / "data/raw/flan_v2_cot/instructions.jsonl", lines=True).instruction.head(150)
    encode = lambda texts: model.encode(list(texts), batch_size=64, convert_to_numpy=True)  # noqa: E731
    return encode(private), encode(public)


def test_same_source_near_one_and_disjoint_sources_clearly_lower(real_embeddings):
    private, public = real_embeddings
    same = mauve_score.mauve(private[:150], private[150:300])
    other = mauve_score.mauve(public, private[150:300])
    assert same["mauve"] > 0.85, same
    assert other["mauve"] < 0.3, other
    assert same["num_buckets"] == 15 and len(same["per_seed"]) == 3


def test_resampled_compares_on_equal_sizes_and_flags_small_sets():
    rng = np.random.default_rng(1)
    big, ref = rng.normal(size=(300, 16)), rng.normal(size=(200, 16))
    out = mauve_score.resampled(big, ref, size=100, repeats=3, seed=7, niter=50, nredo=1)
    assert (out["n_p"], out["n_q"], out["num_buckets"], out["undersized"]) == (100, 100, 10, False)
    assert len(out["per_draw"]) == 3 and len(set(out["per_draw"])) > 1  # the draws differ
    assert out == mauve_score.resampled(big, ref, size=100, repeats=3, seed=7, niter=50, nredo=1)  # seeded
    small = mauve_score.resampled(big[:40], ref, size=100, repeats=2, seed=7, niter=50, nredo=1)
    assert (small["n_p"], small["n_q"], small["num_buckets"], small["undersized"]) == (40, 100, 10, True)


def test_fewer_buckets_score_higher_so_every_set_gets_the_same_k(real_embeddings):
    # Why `evaluate` fixes K: with mauve-text's auto K (smaller sample / 10) a small set gets fewer
    # buckets, and fewer buckets hide differences, so a set released at a small epsilon would look
    # better for being small. Same samples here, only K changes.
    private, public = real_embeddings
    mixed, ref = np.vstack([private[300:600], public[:100]]), private[:200]  # in-domain + 25% FLAN
    scores = [mauve_score.mauve(mixed, ref, buckets=k)["mauve"] for k in (5, 20, 40)]
    assert scores[0] > scores[1] > scores[2] and scores[0] - scores[2] > 0.1, scores
