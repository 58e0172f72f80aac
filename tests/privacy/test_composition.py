"""Composition across datasets and partitions, checked against dp_accounting directly: sequential
within a partition, the maximum across disjoint partitions, separate guarantees per dataset."""
from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant

from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger
from dpinstruct.privacy.composition import compose_dataset

DELTA = 1e-5


def entry(stage, partition, sigma, q, steps, dataset="imdb"):
    return ledger.make_entry(stage=stage, mechanism="poisson_subsampled_gaussian", dataset=dataset,
                             partition=partition, sensitivity=1.0, delta=DELTA, event=acct.dp_sgd_event(sigma, q, steps))


def independent(*components):
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for sigma, q, steps in components:
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return accountant.get_epsilon(DELTA)


def test_disjoint_partitions_compose_in_parallel():
    sft, ppo = (0.9, 0.01, 30), (0.7, 0.02, 20)
    result = compose_dataset([entry("dp_sft", "sft", *sft), entry("dp_ppo", "ppo", *ppo)], DELTA)
    assert result["partitions"]["sft"]["epsilon"] == pytest.approx(independent(sft), abs=1e-8)
    assert result["partitions"]["ppo"]["epsilon"] == pytest.approx(independent(ppo), abs=1e-8)
    assert result["epsilon"] == max(result["partitions"]["sft"]["epsilon"], result["partitions"]["ppo"]["epsilon"])
    assert result["epsilon"] < independent(sft, ppo)  # parallel is cheaper than sequential
    assert "parallel" in result["accountant"]


def test_one_partition_composes_sequentially():
    sft, ppo = (0.9, 0.01, 30), (0.7, 0.02, 20)
    result = compose_dataset([entry("dp_sft", "sft", *sft), entry("dp_ppo", "sft", *ppo)], DELTA)
    assert list(result["partitions"]) == ["sft"]
    assert result["epsilon"] == pytest.approx(independent(sft, ppo), abs=1e-8)
    assert result["epsilon_prv"] >= result["epsilon"] - 0.05
