"""Privacy claims tested as an attacker holding only the repository would test them: from the
committed outputs, params.yaml and the code, with no key.

The attack of issue 11: the noisy histogram is recoverable from committed plot data (its shares)
and metrics (its noisy total); if its noise came from a seed in params.yaml, subtracting that
seed's draws leaves whole numbers, the exact private count of every cluster.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]
SEEDS = range(1000)  # every small seed, which covers every seed params.yaml states


def params_seeds(params) -> set[int]:
    found = set()

    def visit(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if "seed" in k and isinstance(v, int):
                    found.add(v)
                visit(v)

    visit(params)
    return found


def near_integer_share(shares: np.ndarray, noisy_total: float, sigma: float, seed: int) -> float:
    """Share of the unclipped clusters whose residual, under the guess that the noise is seed's
    draws, lies within 0.01 of a whole number (the shares are rounded at 1e-6)."""
    noisy = shares * noisy_total
    residual = noisy - np.random.default_rng(seed).normal(0.0, sigma, len(shares))
    kept = shares > 0  # clusters clipped to zero lost their noise
    return float((np.abs(residual - np.round(residual))[kept] < 0.01).mean())


def test_the_attack_recovers_counts_from_seeded_noise():
    # The attack itself works: on a histogram noised from a public seed, it finds whole numbers.
    counts = np.random.default_rng(5).integers(50, 500, 16).astype(float)
    noisy = np.clip(counts + np.random.default_rng(0).normal(0.0, 10.0, 16), 0, None)
    shares = np.round(noisy / noisy.sum(), 6)
    assert near_integer_share(shares, noisy.sum(), 10.0, seed=0) == 1.0
    assert near_integer_share(shares, noisy.sum(), 10.0, seed=1) < 0.5


def test_the_committed_release_resists_the_attack():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    shares = pd.read_csv(REPO / "plots/eval/cluster_shares.csv").dp_histogram.to_numpy()
    total = json.loads((REPO / "metrics/histogram.json").read_text())["noisy_total"]
    sigma = float(params["histogram"]["sigma"])
    assert params_seeds(params) <= set(SEEDS)
    worst = max(near_integer_share(shares, total, sigma, seed) for seed in SEEDS)
    assert worst < 0.5, f"a seed explains {worst:.0%} of the committed noisy counts as whole numbers"


def test_no_committed_dp_file_states_n():
    # N is private under add/remove-one. The committed private metrics give it to us (the repository
    # is private); no dp-class file may repeat it.
    n = json.loads((REPO / "metrics/prepare.json").read_text())["private"]["train"]
    pattern = re.compile(rf"(?<![\d.]){n}(?![\d])")
    dp_files = [REPO / "metrics/privacy.json", *sorted((REPO / "metrics/privacy").glob("*.json")),
                REPO / "metrics/histogram.json", REPO / "metrics/resample.json"]
    for f in dp_files:
        text = f.read_text()
        assert not pattern.search(text), f"{f.name} states N = {n}"
        assert "n_records" not in text
    ledger = json.loads((REPO / "metrics/privacy/train_generator.json").read_text())
    assert ledger["sampling_rate"] == float(params_value("train_generator", "sampling_rate"))


def params_value(section: str, key: str):
    return yaml.safe_load((REPO / "params.yaml").read_text())[section][key]


def test_no_committed_rl_dp_file_states_a_partition_size():
    # The same for the IMDb dataset: its part sizes are in the (private) prepare metrics only.
    counts = json.loads((REPO / "metrics/rl/prepare.json").read_text())
    sizes = {counts["ppo"], counts["sft"], counts["read"]}
    dp_files = [REPO / "metrics/privacy.json", REPO / "metrics/privacy/dp_sft.json", REPO / "metrics/privacy/dp_ppo.json",
                REPO / "metrics/rl.json", REPO / "plots/rl/reward.csv"]
    for f in dp_files:
        text = f.read_text()
        for n in sizes:
            assert not re.search(rf"(?<![\d.]){n}(?![\d])", text), f"{f.name} states a part size {n}"
        assert "n_records" not in text
    for stage in ("dp_sft", "dp_ppo"):
        entry = json.loads((REPO / f"metrics/privacy/{stage}.json").read_text())
        assert entry["sampling_rate"] == float(yaml.safe_load((REPO / "params.yaml").read_text())["rl"][stage]["sampling_rate"])


def test_no_committed_hh_rlhf_dp_file_states_a_part_size():
    # The preference pairs: their counts are in the (private) prepare metrics and the (private)
    # evaluation only; the DP reward model's ledger entry and the dp RLHF curves (release and FLAN
    # prompts; the real split's are private) must not state them.
    counts = json.loads((REPO / "metrics/rlhf/prepare.json").read_text())
    sizes = {counts["reward"], counts["heldout"], counts["read"], counts["reward"] + counts["heldout"]}
    dp_files = [REPO / "metrics/privacy.json", REPO / "metrics/privacy/dp_reward_model.json",
                *(REPO / f"dvclive/rlhf_ppo/{source}/metrics.json" for source in ("release", "flan"))]
    for f in dp_files:
        text = f.read_text()
        for n in sizes:
            assert not re.search(rf"(?<![\d.]){n}(?![\d])", text), f"{f} states a part size {n}"
    entry = json.loads((REPO / "metrics/privacy/dp_reward_model.json").read_text())
    assert entry["sampling_rate"] == float(yaml.safe_load((REPO / "params.yaml").read_text())["rlhf"]["dp_reward_model"]["sampling_rate"])
    assert entry["dataset_size"].startswith("not published")
