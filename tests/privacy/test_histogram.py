"""The DP histogram mechanism: sensitivity 1 under add/remove-one, the stated noise scale, clipping."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dpinstruct.io.settings.privacy import Randomness
from dpinstruct.privacy import histogram as mechanism
from dpinstruct.privacy.randomness import DPRandom


def test_adding_or_removing_a_record_moves_one_count_by_one():
    labels = np.random.default_rng(0).integers(0, 8, 300)
    full = mechanism.exact_counts(labels, 8)
    for i in (0, 17, 299):
        diff = full - mechanism.exact_counts(np.delete(labels, i), 8)
        assert np.count_nonzero(diff) == 1 and diff.sum() == 1  # L2 (and L1) distance exactly 1
    assert full.sum() == 300 and len(full) == 8
    assert mechanism.exact_counts(np.array([], dtype=np.int64), 3).tolist() == [0, 0, 0]  # empty buckets count


@pytest.mark.parametrize("secure", [False, True])
def test_noise_has_the_stated_scale(secure):
    # Kolmogorov-Smirnov against N(0, 10^2). Secure noise is fresh every run, so the size must make
    # both outcomes near-certain: at 200,000 draws a 5% wrong scale has p ~ 1e-26, and the right
    # scale falls below 1e-6 once in a million runs.
    n = 200_000
    random = DPRandom.for_purpose("test", "noise", privacy=Randomness(secure_mode=secure))
    noise = mechanism.gaussian_noise(n, 10.0, random)
    assert stats.kstest(noise / 10.0, "norm").pvalue > 1e-6
    assert abs(noise.std() - 10.0) < 0.1 and abs(noise.mean()) < 0.15
    assert stats.kstest(noise / 10.5, "norm").pvalue < 1e-6
    again = mechanism.gaussian_noise(n, 10.0, DPRandom.for_purpose("test", "noise", privacy=Randomness(secure_mode=secure)))
    assert np.array_equal(noise, again) != secure  # keyed: replayed by the key; secure: never


def test_the_release_is_clipped_at_zero_and_exact_without_noise():
    labels = np.array([0, 0, 1])
    keyed = DPRandom.for_purpose("test", "clip", privacy=Randomness(secure_mode=False))
    assert (mechanism.noisy_histogram(labels, 50, 10.0, keyed) >= 0).all()
    assert mechanism.noisy_histogram(labels, 3, 0.0, keyed).tolist() == [2.0, 1.0, 0.0]
