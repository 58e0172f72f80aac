"""`account` composes the ledger exactly as independent dp_accounting calls do, and refuses a
release over budget, a missing or stale entry."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import dp_accounting
import pytest
import yaml
from dp_accounting.pld import pld_privacy_accountant

from dpinstruct.io.artifacts import Outputs
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger
from stages import account

Q, T, SIGMA, HIST, DELTA = 0.0334, 15, 0.56, 10.0, 1e-5
DATASETS = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["datasets"]
COUNT = 20.0  # dp_count.sigma: every DP-SGD input's DP count is a Gaussian mechanism of its dataset


IMDB = {"dp_sft": ("sft", 0.9, 0.005, 12), "dp_ppo": ("ppo", 0.8, 0.005, 10)}  # partition, sigma, q, steps


HH = (0.92, 0.05, 400)  # the reward model's sigma, q, steps (dataset hh_rlhf, partition reward)
COUNTS = {"dp_count@instructions": ("instructions", "all"), "dp_count@imdb_sft": ("imdb", "sft"),
          "dp_count@imdb_ppo": ("imdb", "ppo"), "dp_count@hh_rlhf": ("hh_rlhf", "reward")}  # dataset, partition
ALL = ("train_generator", "histogram", "dp_sft", "dp_ppo", "dp_reward_model", *COUNTS)


def write_ledger(sigma=SIGMA, hist=HIST, delta=DELTA, stages=ALL, rl_delta=DELTA, ppo_partition="ppo", count=COUNT,
                 secure_mode=False):
    Path("metrics/privacy").mkdir(parents=True, exist_ok=True)
    entries = {
        "train_generator": ledger.make_entry(stage="train_generator", mechanism="poisson_subsampled_gaussian",
                                             dataset="instructions", partition="all", sensitivity=0.5, delta=delta,
                                             event=acct.dp_sgd_event(sigma, Q, T)),
        "histogram": ledger.make_entry(stage="histogram", mechanism="gaussian", dataset="instructions", partition="all",
                                       sensitivity=1.0, delta=delta,
                                       event=acct.histogram_event(hist)),
    }
    for name, (partition, s, q, t) in IMDB.items():
        entries[name] = ledger.make_entry(stage=name, mechanism="poisson_subsampled_gaussian", dataset="imdb",
                                          partition=ppo_partition if name == "dp_ppo" else partition,
                                          sensitivity=1.0,
                                          delta=rl_delta, event=acct.dp_sgd_event(s, q, t))
    entries["dp_reward_model"] = ledger.make_entry(stage="dp_reward_model", mechanism="poisson_subsampled_gaussian",
                                                   dataset="hh_rlhf", partition="reward", sensitivity=1.0, delta=DELTA,
                                                   event=acct.dp_sgd_event(*HH))
    for name, (dataset, partition) in COUNTS.items():
        entries[name] = ledger.make_entry(stage=name, mechanism="gaussian_count", dataset=dataset, partition=partition,
                                          sensitivity=1.0,
                                          delta=rl_delta if dataset == "imdb" else delta,
                                          event=acct.histogram_event(count), noisy_count=1000.0)
    for name in stages:
        Path(ledger.entry_path(name)).write_text(json.dumps({**entries[name], "secure_mode": secure_mode}))


def run(epsilon=6.0, delta=DELTA, rl_epsilon=4.0, rlhf_epsilon=8.0):
    with Outputs() as out:
        return account.account({"datasets": DATASETS, "privacy": {"epsilon": epsilon, "delta": delta},
                                "rl": {"privacy": {"epsilon": rl_epsilon, "delta": DELTA}},
                                "rlhf": {"privacy": {"epsilon": rlhf_epsilon, "delta": DELTA}}}, out)


def test_account_equals_independent_dp_accounting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ledger()
    result = run()
    independent = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    # in the ledger's order (stage names sorted): PLD composition is exact up to float rounding, and
    # another order moves epsilon by ~1e-12, enough to cross a 1e-9 rounding step
    independent.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent(COUNT), dp_accounting.GaussianDpEvent(HIST),
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA)), T)]))
    assert 0 <= result["epsilon"] - independent.get_epsilon(DELTA) <= 1e-9  # rounded up, never down
    assert abs(result["epsilon"] - result["epsilon_prv"]) < 0.05
    # composing costs more than any part alone, and less than their sum (PLD is tighter than basic composition)
    parts = result["stages"]
    release = ("train_generator", "histogram", "dp_count@instructions")
    assert max(parts[s]["epsilon"] for s in release) < result["epsilon"] < sum(parts[s]["epsilon"] for s in release)
    # the DP count is not free: the release costs more with it than without it
    without = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    without.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA)), T),
        dp_accounting.GaussianDpEvent(HIST)]))
    assert result["epsilon"] > without.get_epsilon(DELTA)
    saved = json.loads(Path(account.OUT).read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("epsilon", "delta", "accountant", "epsilon_prv", "stages", "within_budget"):
        assert key in saved


def test_over_budget_is_refused_and_nothing_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ledger(sigma=0.4)
    with pytest.raises(PrivacyConfigError, match="exceeds privacy.epsilon"):
        run(epsilon=6.0)
    assert not Path(account.OUT).exists()


def test_prv_over_budget_is_refused_even_when_pld_fits(tmp_path, monkeypatch):
    # sigma 0.556: PLD 5.996 but opacus' PRV upper bound 6.007 for a target of 6
    monkeypatch.chdir(tmp_path)
    write_ledger(sigma=0.556)
    with pytest.raises(PrivacyConfigError, match=r"\(PRV 6\.0\d+\) exceeds privacy.epsilon 6.0"):
        run(epsilon=6.0)
    assert not Path(account.OUT).exists()


def test_missing_and_stale_entries_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ledger(stages=("train_generator",))
    with pytest.raises(PrivacyConfigError, match="expected ledger entries"):
        run()
    write_ledger(delta=1e-6)
    with pytest.raises(PrivacyConfigError, match="another delta"):
        run()


@pytest.mark.parametrize("count", sorted(COUNTS))
def test_a_missing_dp_count_is_refused(tmp_path, monkeypatch, count):
    # each DP count is a mechanism of its dataset: a ledger without it would understate epsilon
    monkeypatch.chdir(tmp_path)
    write_ledger(stages=tuple(s for s in ALL if s != count))
    with pytest.raises(PrivacyConfigError, match=r"expected ledger entries .*" + re.escape(f"'{count}'")):
        run()
    assert not Path(account.OUT).exists()


def test_a_ledger_mixing_randomness_modes_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ledger(secure_mode=True)
    assert run()["within_budget"]  # all secure: one mode
    Path(account.OUT).unlink()
    write_ledger(secure_mode=True, stages=("histogram",))
    write_ledger(secure_mode=False, stages=tuple(s for s in ALL if s != "histogram"))
    with pytest.raises(PrivacyConfigError, match=r"entries drew their randomness in different modes \(secure_mode per "
                                                 r"stage: .*'histogram': True.*\); privacy\.secure_mode is one setting"):
        run()
    assert not Path(account.OUT).exists()


def test_non_private_release(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ledger(sigma=0.0, hist=0.0)
    write_ledger(count=0.0, stages=("dp_count@instructions",))  # a non-private run counts exactly
    result = run(epsilon=math.inf)
    assert result["epsilon"] == "inf" and result["private"] is False and result["within_budget"] is True


def independent_imdb(*stages, counts=1):
    """One part of imdb: its DP-SGD stages and ``counts`` DP counts of COUNT."""
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for _ in range(counts):  # the ledger's order: dp_count@... sorts first
        accountant.compose(dp_accounting.GaussianDpEvent(COUNT))
    for name in stages:
        _, sigma, q, steps = IMDB[name]
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return accountant.get_epsilon(DELTA)


def test_one_guarantee_per_dataset_parallel_across_disjoint_parts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ledger()
    result = run()
    imdb = result["datasets"]["imdb"]
    assert imdb["epsilon"] == pytest.approx(max(independent_imdb("dp_sft"), independent_imdb("dp_ppo")), abs=1e-8)
    assert set(imdb["partitions"]) == {"sft", "ppo"} and imdb["budget"] == "rl.privacy"
    assert imdb["partitions"]["sft"]["stages"] == ["dp_count@imdb_sft", "dp_sft"]
    assert imdb["partitions"]["ppo"]["stages"] == ["dp_count@imdb_ppo", "dp_ppo"]
    # the release's guarantee does not move with the other dataset
    assert result["epsilon"] == result["datasets"]["instructions"]["epsilon"]
    assert result["stages"]["dp_ppo"]["dataset"] == "imdb" and result["stages"]["dp_ppo"]["partition"] == "ppo"


def test_a_shared_part_composes_sequentially_and_is_held_to_its_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # DP-PPO on DP-SFT's part composes with DP-SFT and that part's count (the ppo part keeps its count alone)
    write_ledger(ppo_partition="sft")
    both = independent_imdb("dp_sft", "dp_ppo")
    assert both > independent_imdb()
    assert run(rl_epsilon=10.0)["datasets"]["imdb"]["epsilon"] == pytest.approx(both, abs=1e-8)
    with pytest.raises(PrivacyConfigError, match="dataset imdb: composed epsilon .* exceeds rl.privacy.epsilon"):
        run(rl_epsilon=both - 0.1)


def test_the_reward_models_dataset_has_its_own_guarantee_and_budget(tmp_path, monkeypatch):
    # hh_rlhf's preference pairs are not instructions: its entry composes alone, and using the
    # release as RLHF prompts adds nothing to the release's guarantee
    monkeypatch.chdir(tmp_path)
    write_ledger()
    result = run()
    hh = result["datasets"]["hh_rlhf"]
    independent = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    independent.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(COUNT),  # the ledger's order
                                                       dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(HH[1], dp_accounting.GaussianDpEvent(HH[0])), HH[2])]))
    assert 0 <= hh["epsilon"] - independent.get_epsilon(DELTA) <= 1e-9
    assert hh["budget"] == "rlhf.privacy" and set(hh["partitions"]) == {"reward"}
    assert result["stages"]["dp_reward_model"]["dataset"] == "hh_rlhf"
    assert result["epsilon"] == result["datasets"]["instructions"]["epsilon"]
    assert result["datasets"]["instructions"]["partitions"]["all"]["stages"] == [
        "dp_count@instructions", "histogram", "train_generator"]
    with pytest.raises(PrivacyConfigError, match="dataset hh_rlhf: composed epsilon .* exceeds rlhf.privacy.epsilon"):
        write_ledger()
        run(rlhf_epsilon=hh["epsilon"] - 0.1)
    for p in Path("metrics/privacy").glob("dp_reward_model.json"):
        p.unlink()
    with pytest.raises(PrivacyConfigError, match="expected ledger entries .*'hh_rlhf': \\['dp_count@hh_rlhf'\\]"):
        run()


def set_neighbouring(stage, relation):
    path = Path(ledger.entry_path(stage))
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "neighbouring": relation}))


def test_user_level_entries_compose_and_say_so_and_mixed_relations_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ledger()
    record = run()
    for stage in ("train_generator", "histogram", "dp_count@instructions"):
        set_neighbouring(stage, "add_or_remove_one_user")
    user = run()
    # the same events over users: the same epsilon, now stated for a user; other datasets unchanged
    assert user["epsilon"] == record["epsilon"] and user["neighbouring"] == "add_or_remove_one_user"
    assert user["datasets"]["instructions"]["neighbouring"] == "add_or_remove_one_user"
    assert user["datasets"]["imdb"]["neighbouring"] == "add_or_remove_one"
    Path(account.OUT).unlink()
    set_neighbouring("histogram", "add_or_remove_one")  # e.g. a stale histogram from a record-level run
    with pytest.raises(PrivacyConfigError, match=r"dataset instructions: ledger entries under different "
                                                 r"neighbouring relations .* do not compose"):
        run()
    assert not Path(account.OUT).exists()


def test_datasets_come_from_params_and_their_mechanisms_from_dvc_yaml(tmp_path):
    budgets, expected, release = account.datasets({"datasets": DATASETS})
    assert release == "instructions" and budgets["imdb"] == "rl.privacy"
    assert expected["hh_rlhf"] == ("dp_count@hh_rlhf", "dp_reward_model")
    # a dataset that dvc.yaml's mechanisms spend but params do not declare has no budget: refused
    without = {k: v for k, v in DATASETS.items() if k != "hh_rlhf"}
    with pytest.raises(PrivacyConfigError, match=r"mechanisms \['dp_count@hh_rlhf \(hh_rlhf\)', 'dp_reward_model "
                                                 r"\(hh_rlhf\)'\] spend a dataset that params.yaml `datasets` does not"):
        account.datasets({"datasets": without})
    with pytest.raises(PrivacyConfigError, match=r"datasets \['spare'\]: no dvc.yaml stage spends them"):
        account.datasets({"datasets": {**DATASETS, "spare": {"budget": "privacy"}}})
    two = {**DATASETS, "imdb": {"budget": "rl.privacy", "release": True}}
    with pytest.raises(PrivacyConfigError, match=r"exactly one dataset must be marked release: true"):
        account.datasets({"datasets": two})
