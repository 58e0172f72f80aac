"""Accounting and budget calibration, checked against independent dp_accounting / opacus calls."""
from __future__ import annotations

import dataclasses
import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.io.settings.privacy import Budget, Histogram
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger

PRIVACY = Budget(epsilon=6.0, delta=1e-5)
HIST = Histogram(sigma=10.0)


def test_dp_sgd_event_matches_a_hand_built_event_and_rdp_bounds_it():
    q, sigma, steps, delta = 0.02, 0.9, 200, 1e-6
    event = acct.dp_sgd_event(sigma, q, steps)
    manual = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    assert event == manual
    pld = acct.epsilon_pld([event], delta)
    rdp = rdp_privacy_accountant.RdpAccountant().compose(manual).get_epsilon(delta)
    prv = acct.epsilon_prv([(sigma, q, steps)], delta)
    assert pld < rdp  # PLD is tighter than RDP...
    assert abs(pld - prv) < 0.05  # ...and agrees with an independent accountant


def test_the_training_curve_states_the_accountants_epsilon_bit_for_bit():
    # The curve builds the one-step PLD once; each point must still be exactly what an independent
    # PLDAccountant says of the same t steps, so the last point equals the ledger's epsilon.
    for sigma, q, delta, points in ((0.65, 1 / 3, 1e-3, (1, 5)), (1.3, 0.15, 1e-5, (2,))):
        curve = acct.EpsilonCurve(sigma, q, delta)
        for steps in points:
            accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=acct.PLD_DISCRETISATION)
            accountant.compose(dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
            assert curve(steps) == accountant.get_epsilon(delta)
    curve = acct.EpsilonCurve(1.3, 0.15, 1e-5)
    assert curve(1) < curve(2) < curve(3)  # epsilon grows as steps are spent


def test_remembered_answers_are_the_answers_to_the_same_question_only():
    # Questions that differ in one field, asked in turn and again: each answer is an independent accountant's.
    questions = [((1.5, 0.1, 4), 1e-5), ((1.5, 0.1, 4), 1e-6), ((1.5, 0.1, 5), 1e-5), ((1.5000001, 0.1, 4), 1e-5)]
    events = [dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), t)
              for (s, q, t), _ in questions]
    independent = [pld_privacy_accountant.PLDAccountant(value_discretization_interval=acct.PLD_DISCRETISATION)
                   .compose(e).get_epsilon(d) for e, (_, d) in zip(events, questions)]
    for _ in range(2):
        assert [acct.epsilon_pld([e], d) for e, (_, d) in zip(events, questions)] == independent
    assert acct.epsilon_prv([(1.5, 0.1, 4)], 1e-5) < acct.epsilon_prv([(1.5, 0.1, 5)], 1e-5)


def test_gaussian_histogram_matches_the_analytic_gaussian_mechanism():
    # Balle & Wang's exact epsilon for one Gaussian mechanism, computed independently of PLD.
    sigma, delta = 10.0, 1e-5
    exact = dp_accounting.get_epsilon_gaussian(sigma, delta)
    assert acct.epsilon_pld([acct.histogram_event(sigma)], delta) == pytest.approx(exact, abs=1e-3)


def independent_epsilons(sigma, q, steps, hist, delta):
    """The composition computed without anything from dpinstruct: dp_accounting's PLD and opacus' PRV."""
    from opacus.accountants import PRVAccountant

    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    pld.compose(dp_accounting.GaussianDpEvent(hist))
    prv = PRVAccountant()
    prv.history = [(sigma, q, steps), (hist, 1.0, 1)]
    return pld.get_epsilon(delta), prv.get_epsilon(delta=delta, eps_error=0.01)


@pytest.mark.parametrize("target", [1.0, 3.0, 6.0])
def test_calibration_meets_the_composed_target_by_both_accountants(target):
    q, steps, delta, hist = 0.0334, 15, 1e-5, 10.0
    sigma, pld, prv = acct.calibrate_noise_multiplier(target, delta, q, steps, [(hist, 1.0, 1)])
    # inverse check, computed independently of calibrate: sigma -> epsilon <= target, tightly
    again_pld, again_prv = independent_epsilons(sigma, q, steps, hist, delta)
    assert again_pld == pytest.approx(pld) and again_prv == pytest.approx(prv)
    assert again_pld <= target and again_prv <= target
    assert target - 0.05 <= max(again_pld, again_prv)
    # and a little less noise would exceed the target
    assert max(independent_epsilons(sigma * 0.98, q, steps, hist, delta)) > target


def test_paper_setting_gives_noise_multiplier_near_0_8():
    # N=180,000, expected batch 4,096 (q = 4096 / 180000), 10 epochs (T=439), delta 5e-7, histogram sigma 10
    # (the paper has no DP count: the prior is the histogram alone)
    plan = acct.plan_generator(Budget(epsilon=5.94, delta=5e-7), HIST, noisy_count=180_000, prior=[(10.0, 1.0, 1)],
                               sampling_rate=4096 / 180_000, epochs=10, clip_norm=0.5)
    assert plan.steps == 439 and plan.expected_batch_size == pytest.approx(4096)  # the divisor q x N~
    assert plan.noise_multiplier == pytest.approx(0.8, abs=0.03)
    assert 5.89 <= plan.composed_epsilon <= 5.94 and plan.composed_epsilon_prv <= 5.94


def test_the_plan_depends_on_the_dp_count_only_through_the_divisor():
    # q, T and sigma are params: counts of different sizes give identical plans but for the divisor q x N~
    plans = [acct.plan_generator(PRIVACY, HIST, noisy_count=n, prior=[(10.0, 1.0, 1), (20.0, 1.0, 1)],
                                 sampling_rate=0.05, epochs=1.0, clip_norm=0.5) for n in (2000, 2001.7, 50_000)]
    same = [dataclasses.replace(p, expected_batch_size=0) for p in plans]
    assert same[0] == same[1] == same[2]
    assert [p.expected_batch_size for p in plans] == pytest.approx([100, 100.085, 2500])


def test_the_dp_count_is_a_prior_of_the_calibration():
    # the count's Gaussian composes with the histogram: the generator gets less budget, so more noise,
    # and the composed epsilon (generator + histogram + count) still meets the target by both accountants
    without = acct.plan_generator(PRIVACY, HIST, noisy_count=5000, prior=[(10.0, 1.0, 1)], sampling_rate=0.05,
                                  epochs=1.0, clip_norm=0.5)
    with_count = acct.plan_generator(PRIVACY, HIST, noisy_count=5000, prior=[(10.0, 1.0, 1), (5.0, 1.0, 1)],
                                     sampling_rate=0.05, epochs=1.0, clip_norm=0.5)
    assert with_count.noise_multiplier > without.noise_multiplier
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(dp_accounting.ComposedDpEvent([acct.dp_sgd_event(with_count.noise_multiplier, 0.05, with_count.steps),
                                               dp_accounting.GaussianDpEvent(10.0), dp_accounting.GaussianDpEvent(5.0)]))
    assert pld.get_epsilon(1e-5) == pytest.approx(with_count.composed_epsilon, abs=1e-6)
    assert with_count.composed_epsilon <= 6.0 and with_count.composed_epsilon_prv <= 6.0
    with pytest.raises(PrivacyConfigError, match=r"privacy.epsilon=6.0 cannot be met: the histogram "
                                                 r"\(histogram.sigma=10.0\) and the DP count alone spend\(s\) epsilon"):
        acct.plan_generator(PRIVACY, HIST, noisy_count=5000, prior=[(10.0, 1.0, 1), (0.3, 1.0, 1)],
                            sampling_rate=0.05, epochs=1.0, clip_norm=0.5)


def test_a_small_or_negative_dp_count_clamps_at_one():
    # N~ = N + noise may come out below 1 on a tiny set: the divisor and the delta check use max(N~, 1)
    p = plan(PRIVACY, HIST, n=-7.5, q=0.1)
    assert p.private and p.expected_batch_size == pytest.approx(0.1)
    with pytest.raises(PrivacyConfigError, match=r"delta=1.0 must be in \(0, 1/N\) = \(0, 1\) for the DP count N~=1\.0"):
        plan(Budget(epsilon=6.0, delta=1.0), HIST, n=0.2)


def test_dp_sgd_plan_uses_the_dp_count_for_divisor_and_delta():
    budget = Budget(epsilon=4.0, delta=1e-5)
    p = acct.plan_dp_sgd(budget, budget_name="rl.privacy", noisy_count=12_400.6, sampling_rate=0.005, steps=12,
                         clip_norm=1.0, prior=[(20.0, 1.0, 1)])
    assert p.expected_batch_size == pytest.approx(0.005 * 12_400.6) and p.composed_epsilon <= 4.0
    alone = acct.plan_dp_sgd(budget, budget_name="rl.privacy", noisy_count=12_400.6, sampling_rate=0.005, steps=12,
                             clip_norm=1.0)
    assert p.noise_multiplier > alone.noise_multiplier  # the count is paid for
    with pytest.raises(PrivacyConfigError, match=r"rl.privacy.delta=1e-05 must be in \(0, 1/N\).*N~=100000\.5"):
        acct.plan_dp_sgd(budget, budget_name="rl.privacy", noisy_count=100_000.5, sampling_rate=0.005, steps=12,
                         clip_norm=1.0)


def plan(privacy, hist, n=10000, q=0.01):
    """The generator's plan as dp_generator.plan makes it: the histogram's noise is the prior."""
    return acct.plan_generator(privacy, hist, noisy_count=n, prior=[(hist.sigma, 1.0, 1)],
                               sampling_rate=q, epochs=1.0, clip_norm=0.5)


@pytest.mark.parametrize("privacy, hist, n, q, message", [
    ({"epsilon": 6.0, "delta": 1e-3}, HIST, 1000, 0.1, r"delta=0.001 must be in \(0, 1/N\)"),
    ({"epsilon": 6.0, "delta": 1e-4}, HIST, 10000, 0.01, r"must be in \(0, 1/N\)"),  # delta == 1/N~
    ({"epsilon": 6.0, "delta": 1e-4}, HIST, 10000.3, 0.01, r"for the DP count N~=10000\.3"),  # N~ is not an integer
    ({"epsilon": 0.02, "delta": 1e-6}, Histogram(sigma=1.0), 10000, 0.01, r"histogram \(histogram.sigma=1.0\) and the DP count alone spend\(s\) epsilon"),
    ({"epsilon": 6.0, "delta": 1e-6}, HIST, 50, 1.5, r"sampling_rate=1.5 must be in \(0, 1\]"),
    ({"epsilon": 6.0, "delta": 1e-6}, HIST, 50, 0.0, r"sampling_rate=0.0 must be in"),
    ({"epsilon": 6.0, "delta": 1e-6}, Histogram(sigma=0), 10000, 0.01, r"histogram.sigma must be > 0"),
    ({"epsilon": -1, "delta": 1e-6}, HIST, 10000, 0.01, r"must be positive"),
])
def test_unsafe_configurations_are_refused(privacy, hist, n, q, message):
    # a missing or mistyped epsilon, delta or sigma never gets here: reading the params refuses it
    # (tests/io/test_settings.py)
    with pytest.raises(PrivacyConfigError, match=message):
        plan(Budget(**privacy), hist, n, q)


def test_non_private_plan_and_int_epsilon_from_dvc_exp():
    p = plan(Budget(epsilon=".inf", delta=1e-5), HIST, n=1000, q=0.1)
    assert not p.private and p.noise_multiplier == 0 and math.isinf(p.clip_norm)
    assert math.isinf(p.composed_epsilon)
    # `dvc exp run -S privacy.epsilon=8` writes the int 8
    p = plan(Budget(epsilon=8, delta=1e-4), HIST, n=1000, q=0.1)
    assert p.private and p.composed_epsilon <= 8 and p.composed_epsilon_prv <= 8


def test_round_up_never_understates():
    assert acct.round_up(5.9999999991) == 6.0 and acct.round_up(6.0) == 6.0
    assert acct.round_up(1.0000000001) == 1.000000001 and math.isinf(acct.round_up(math.inf))


def test_ledger_entry_round_trips_its_event_and_is_strict_json():
    event = acct.dp_sgd_event(0.7, 0.05, 40)
    entry = ledger.make_entry(stage="s", mechanism="poisson_subsampled_gaussian", dataset="d", partition="all",
                              sensitivity=0.5, delta=1e-5,
                              event=event)
    text = json.dumps(entry, allow_nan=False)
    back = json.loads(text)
    assert ledger.event_from_json(back["dp_event"]) == event
    assert back["epsilon"] == pytest.approx(
        dp_accounting.pld.PLDAccountant().compose(event).get_epsilon(1e-5), rel=1e-6)
    assert "n_records" not in back and back["dataset_size"].startswith("not published")
    assert back["noise_std"] == pytest.approx(0.35)
    nonprivate = ledger.make_entry(stage="s", mechanism="poisson_subsampled_gaussian", dataset="d", partition="all",
                                   sampling_rate=0.05, steps=40, sensitivity=math.inf, delta=1e-5,
                                   event=acct.dp_sgd_event(0.0, 0.05, 40))
    assert json.loads(json.dumps(nonprivate, allow_nan=False))["epsilon"] == "inf"
    assert nonprivate["private"] is False
