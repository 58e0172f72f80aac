"""The histogram stage adds exactly the noise it claims: N(0, sigma^2) per bin from the keyed stream
bound to its run key, replayed here draw for draw with the test key.

A check that the noise is merely non-zero passes a stage that adds sigma/10 (epsilon then ~10x what
the ledger says); this one recomputes the stream the stage must have used and compares the released
counts to exact + that noise, so any other scale, stream or binding fails.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dpinstruct.io.settings.privacy import Randomness
from dpinstruct.privacy import histogram as mechanism
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.privacy.run_key import run_key
from stages import histogram
from tests.stages.test_histogram import PARAMS, exact, fitted, run_histogram, vectors  # noqa: F401 (fixture)


def replayed(params: dict) -> np.ndarray:
    """exact counts + the noise of the stream the stage must draw from, clipped at 0."""
    privacy = params["privacy"]
    stream = DPRandom.for_purpose("histogram/noise", *run_key("histogram", (params["histogram"], privacy,
                                                                           params["user_level"]), histogram.INPUTS),
                                  privacy=Randomness.from_params(params))
    return mechanism.release(exact(vectors(300, 1)), float(params["histogram"]["sigma"]), stream)


def test_the_released_counts_are_exact_plus_the_replayed_keyed_noise(fitted):
    run_histogram(PARAMS)
    released = pd.read_parquet(histogram.NOISY).noisy_count.to_numpy()
    np.testing.assert_array_equal(released, replayed(PARAMS))
    kept = released > 0  # clipping at 0 hides a bin's noise
    noise = released[kept] - exact(vectors(300, 1))[kept]
    assert np.abs(noise).max() > 1.0  # sigma 10: the replay is not comparing noise-free counts


def test_a_stage_adding_a_tenth_of_the_noise_fails_the_replay(fitted, monkeypatch):
    real = mechanism.release
    monkeypatch.setattr(histogram, "release", lambda counts, sigma, random: real(counts, sigma / 10, random))
    run_histogram(PARAMS)
    released = pd.read_parquet(histogram.NOISY).noisy_count.to_numpy()
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(released, replayed(PARAMS))
