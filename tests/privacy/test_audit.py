"""The one-run audit: the p-value and lower bound against hand-worked cases and simulations, and
`dpinstruct audit` end to end on a tiny slice with the real generator."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dpinstruct.privacy import audit as A
from tests.spies import record_reads, unbound_reads


def test_p_value_without_delta_is_the_binomial_tail_of_randomised_response():
    # eps = 0: every guess is a fair coin; 10 of 10 right has probability 2^-10
    assert A.p_value(10, 10, 10, 0.0, 0.0) == pytest.approx(1 / 1024)
    # eps = log 3: accuracy 3/4; P[Bin(4, 3/4) >= 3] = 4 (3/4)^3 (1/4) + (3/4)^4 = 189/256
    assert A.p_value(10, 4, 3, math.log(3), 0.0) == pytest.approx(189 / 256)


def test_p_value_with_delta_adds_the_theorems_alpha_term():
    # m = 4, r = v = 2, eps = 0, delta = 0.01 by hand: beta = P[Bin(2, 1/2) >= 2] = 1/4;
    # alpha = max(P[1 <= B < 2] / 1, P[0 <= B < 2] / 2) = max(1/2, 3/8) = 1/2;
    # p = beta + 2 m delta alpha = 1/4 + 8 x 0.01 x 1/2 = 0.29
    assert A.p_value(4, 2, 2, 0.0, 0.01) == pytest.approx(0.29)


def test_lower_bound_inverts_the_tail_by_hand():
    # 10 of 10 right, delta 0, significance 0.05: q^10 = 0.05, eps = log(q / (1 - q))
    q = 0.05 ** 0.1
    assert A.epsilon_lower_bound(10, 10, 10, significance=0.05, delta=0.0) == pytest.approx(
        math.log(q / (1 - q)), abs=1e-5)
    # 7 of 10 right is what a fair coin does 17% of the time: nothing is refuted
    assert A.epsilon_lower_bound(10, 10, 7, significance=0.05, delta=0.0) == 0.0
    # delta can only weaken the bound
    assert (A.epsilon_lower_bound(1000, 200, 180, significance=0.05, delta=1e-5)
            <= A.epsilon_lower_bound(1000, 200, 180, significance=0.05, delta=0.0))


def test_guesses_take_the_top_as_in_and_the_bottom_as_out():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, False, True, False, False, True])
    assert A.guesses(scores, included, 2) == (4, 1 + 1)  # top {0: in, 1: out}, bottom {4: out, 5: in}


def randomised_response(epsilon, m, rng):
    """A mechanism that is exactly epsilon-DP per canary: the score reveals inclusion with accuracy
    e^eps / (1 + e^eps), and carries no other information."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < 1 / (1 + math.exp(-epsilon))
    said_in = np.where(truthful, included, ~included)
    return np.where(said_in, 1.0, 0.0) + 1e-3 * rng.random(m), included


def test_bound_stays_below_the_true_epsilon_at_the_stated_confidence():
    rng, epsilon, exceed = np.random.default_rng(0), 1.0, 0
    for _ in range(200):
        scores, included = randomised_response(epsilon, 1000, rng)
        exceed += A.audit(scores, included, confidence=0.95, delta=0.0).lower_bound > epsilon
    assert exceed <= 10  # at most 5% (+ slack) of audits may overshoot; Bonferroni makes it rarer


def test_the_audit_has_power_when_the_mechanism_leaks():
    rng = np.random.default_rng(1)
    scores, included = randomised_response(4.0, 1000, rng)
    bound = A.audit(scores, included, confidence=0.95, delta=1e-5).lower_bound
    assert 2.0 < bound < 4.0
    # a mechanism that ignores the data gives nothing
    assert A.audit(rng.random(1000), rng.random(1000) < 0.5, confidence=0.95, delta=1e-5).lower_bound == 0.0


def test_grid_is_bonferroni_corrected():
    rng = np.random.default_rng(2)
    scores, included = randomised_response(3.0, 500, rng)
    result = A.audit(scores, included, confidence=0.95, delta=0.0)
    ks = len(result.grid)
    best = max(result.grid, key=lambda g: g["lower_bound"])
    assert result.lower_bound == pytest.approx(A.epsilon_lower_bound(
        500, best["guesses"], best["correct"], significance=0.05 / ks, delta=0.0), abs=1e-6)
    assert result.lower_bound < A.epsilon_lower_bound(500, best["guesses"], best["correct"], significance=0.05,
                                                      delta=0.0)


def test_p_value_matches_a_direct_sum_of_the_binomial():
    m, r, v, eps, delta = 50, 20, 15, 0.7, 1e-3
    q = 1 / (1 + math.exp(-eps))
    pmf = [stats.binom.pmf(j, r, q) for j in range(r + 1)]
    beta = sum(pmf[v:])
    alpha = max(sum(pmf[v - i: v]) / i for i in range(1, v + 1))
    assert A.p_value(m, r, v, eps, delta) == pytest.approx(beta + 2 * m * delta * alpha)


@pytest.mark.parametrize("bad", [{"m": 3, "r": 4, "v": 1}, {"m": 5, "r": 2, "v": 3}])
def test_p_value_refuses_impossible_counts(bad):
    with pytest.raises(ValueError):
        A.p_value(bad["m"], bad["r"], bad["v"], 1.0, 0.0)


def test_audit_command_end_to_end_on_a_tiny_slice(project, monkeypatch):
    from dpinstruct.cli import main
    from dpinstruct.io.artifacts import Outputs
    from stages import prepare

    project.use_private_rows(60)  # 38 train rows
    project.params["privacy"].update(epsilon=6.0, delta=1e-3)
    project.params["dp_count"]["sigma"] = 4.0  # N~ near N: the divisor q x (N~ + canaries) is a real batch
    project.params["train_generator"].update(sampling_rate=0.25, epochs=0.5, micro_batch_tokens=256)
    project.params["audit"] = {"canaries": 24, "confidence": 0.9}
    project.save()
    with Outputs() as out:
        prepare.prepare(project.params, out)
    project.dp_count("instructions")  # the audit plans exactly as train_generator: with the run's DP count
    with record_reads() as seen:
        assert main(["audit", "--out", "metrics/audit.json"]) == 0
    # its streams bind everything train_generator's do, and it reads nothing else (params.yaml is bound
    # as the params sections it holds)
    from stages import train_generator

    assert {str(project.root / p) for p in train_generator.INPUTS} <= seen["bound"]
    assert not unbound_reads(seen, project.root, own=("params.yaml",))
    report = json.loads((project.root / "metrics/audit.json").read_text())
    for r in (report, report["inf"]):
        assert r["canaries"] == 24 and 0 < r["canaries_included"] < 24 and r["confidence"] == 0.9
        assert r["lower_bound"] >= 0 and r["steps"] == 2 and len(r["grid"]) >= 2
    assert report["lower_bound"] <= report["claimed_epsilon"] < 6.0  # the generator's share of the budget
    assert report["inf"]["claimed_epsilon"] == "inf" and report["inf"]["noise_multiplier"] == 0.0
    # the canaries are synthetic: no train instruction appears in the report
    train = pd.read_parquet(project.root / "data/prepared/train.parquet").instruction
    text = (project.root / "metrics/audit.json").read_text()
    assert not any(t in text for t in train)


def test_audit_without_the_dp_count_fails_cleanly(project, capsys):
    from dpinstruct.cli import main
    from dpinstruct.io.artifacts import Outputs
    from stages import prepare

    project.use_private_rows(60)
    project.params["audit"] = {"canaries": 4, "confidence": 0.9}
    project.save()
    with Outputs() as out:
        prepare.prepare(project.params, out)
    assert main(["audit", "--out", "metrics/audit.json"]) == 1
    err = capsys.readouterr().err
    assert "audit failed: " in err and "dp_count@instructions" in err

