"""The evaluation's intervals against independent computations (printed t tables, the Wilson
quadratic solved directly, bootstraps whose answer is known)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dpinstruct.evaluation.intervals import bootstrap_ratio, draws_interval, excludes_zero, wilson

Z95 = 1.959963984540054
T95_DF4 = 2.7764451051977987  # Student t, 0.975 quantile, 4 degrees of freedom (any printed table: 2.776)


def test_draws_interval_is_the_t_interval_of_the_mean():
    x = [0.80, 0.82, 0.85, 0.79, 0.81]
    sd = math.sqrt(sum((v - 0.814) ** 2 for v in x) / 4)
    got = draws_interval(x, 0.95)
    assert got["mean"] == pytest.approx(0.814)
    assert got["hi"] - got["mean"] == pytest.approx(T95_DF4 * sd / math.sqrt(5))
    assert got["mean"] - got["lo"] == pytest.approx(T95_DF4 * sd / math.sqrt(5))
    one = draws_interval([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["lo"]) and not excludes_zero(one)


@pytest.mark.parametrize("k,n", [(300, 400), (0, 10), (10, 10), (13, 1152)])
def test_wilson_solves_the_score_quadratic(k, n):
    # The Wilson bounds are the p with |k/n - p| = z sqrt(p (1 - p) / n): roots of a quadratic in p.
    phat, z2 = k / n, Z95 ** 2
    roots = sorted(np.roots([1 + z2 / n, -(2 * phat + z2 / n), phat ** 2]).real)
    got = wilson(k, n)
    assert got["mean"] == phat
    assert (got["lo"], got["hi"]) == pytest.approx((roots[0], roots[1]), abs=1e-12)
    assert 0 <= got["lo"] <= phat <= got["hi"] <= 1


def test_wilson_refuses_an_empty_sample():
    with pytest.raises(ValueError, match="n must be positive"):
        wilson(0, 0)


def test_bootstrap_ratio_of_a_constant_rate_is_exact_and_paired_differences_cancel_shared_noise():
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 40, 300).astype(float)
    per_token = rng.gamma(4.0, 1.0, 300)  # records differ a lot in difficulty
    dp = per_token * tokens
    base = dp + 0.1 * tokens  # the same records, uniformly 0.1 nats per token worse
    constant = bootstrap_ratio(2.5 * tokens, tokens, resamples=200, seed=0)
    assert constant["lo"] == pytest.approx(2.5) and constant["hi"] == pytest.approx(2.5)
    alone = bootstrap_ratio(dp, tokens, resamples=500, seed=0)
    paired = bootstrap_ratio(dp, tokens, minus=base, resamples=500, seed=0)
    assert alone["lo"] < alone["mean"] < alone["hi"] and alone["hi"] - alone["lo"] > 0.2
    assert paired["mean"] == pytest.approx(-0.1) and paired["hi"] - paired["lo"] < 1e-9  # the noise is shared
    assert excludes_zero(paired)
    assert bootstrap_ratio(dp, tokens, resamples=500, seed=0) == alone  # seeded


def test_bootstrap_interval_covers_the_true_rate_about_as_often_as_it_claims():
    rng, hits = np.random.default_rng(2), 0
    for trial in range(200):
        tokens = rng.integers(5, 30, 120).astype(float)
        nll = rng.poisson(2.0 * tokens).astype(float)  # true rate 2.0 per token
        got = bootstrap_ratio(nll, tokens, resamples=300, seed=trial)
        hits += got["lo"] <= 2.0 <= got["hi"]
    assert 0.88 <= hits / 200 <= 0.99
