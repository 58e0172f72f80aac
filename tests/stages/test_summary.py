"""The summary stage (the pipeline's only DVC metrics) and the params normalisation behind
`dvc exp run -S privacy.epsilon=6`, and the machine fingerprint in every ledger entry."""
from __future__ import annotations

from pathlib import Path

import yaml

from dpinstruct.io.fingerprint import fingerprint, short
from dpinstruct.io.params import params_hash
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger
from stages import summary

REPO = Path(__file__).resolve().parents[2]
REPORTS = {
    "privacy": {"datasets": {"instructions": {"epsilon": 5.984425865, "delta": 1e-5},
                             "imdb": {"epsilon": 3.984609116, "delta": 1e-5}}},
    "eval": {"mauve": {s: {"mauve": m, "lo": m - 0.02, "hi": m + 0.02}
                       for s, m in (("release", 0.8655812), ("pool", 0.83177), ("base", 0.7712), ("train", 0.95276),
                                    ("public", 0.047737))},
             "yield": {"pool": {"mean": 968 / 2304, "lo": 0.400, "hi": 0.440}, "base": {"mean": 0.128, "lo": 0.1, "hi": 0.15}}},
    "val_nll": {"dp": {"mean": 3.98765, "lo": 3.9, "hi": 4.1}, "base": {"mean": 4.5, "lo": 4.4, "hi": 4.6}},
    "resample": {"released": 475},
}


def test_summary_holds_the_compared_figures_rounded_with_interval_half_widths():
    got = summary.summarise(REPORTS)
    assert got == {
        "epsilon": {"imdb": 3.985, "instructions": 5.984}, "delta": {"imdb": 1e-5, "instructions": 1e-5},
        "released": 475,
        "yield": {"dp": 0.4201, "dp_pm": 0.02, "base": 0.128},
        "nll": {"dp": 3.988, "dp_pm": 0.1, "base": 4.5},
        "mauve": {"release": 0.8656, "release_pm": 0.02, "pool": 0.8318, "pool_pm": 0.02, "base": 0.7712,
                  "train": 0.9528, "public": 0.04774},
    }


def test_a_non_private_run_summarises_to_strict_json_with_epsilon_inf():
    import copy
    import json

    reports = copy.deepcopy(REPORTS)
    reports["privacy"]["datasets"]["instructions"]["epsilon"] = "inf"  # as the ledger writes it
    got = summary.summarise(reports)
    assert got["epsilon"] == {"imdb": 3.985, "instructions": "inf"}
    json.dumps(got, allow_nan=False)


def test_summary_is_the_only_dvc_metric_and_it_is_small():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = [m for s in stages.values() for m in (s.get("metrics") or (s.get("do") or {}).get("metrics") or [])]
    assert declared == [{"metrics/summary.json": {"cache": False}}]
    flat = [k for v in summary.summarise(REPORTS).values() for k in (v if isinstance(v, dict) else [v])]
    assert len(flat) <= 20  # one row of `dvc metrics show` on a terminal


def test_params_hash_normalises_numbers_like_dvc_compares_them():
    assert params_hash({"epsilon": 6, "lr": 1}) == params_hash({"epsilon": 6.0, "lr": 1.0})
    assert params_hash({"epsilon": "inf"}) == params_hash({"epsilon": float("inf")}) == params_hash({"epsilon": ".inf"})
    assert params_hash({"bf16": True}) != params_hash({"bf16": 1})
    assert params_hash({"epsilon": 6.0}) != params_hash({"epsilon": 6.000001})


def test_every_ledger_entry_names_the_machine_and_rounds_epsilon_up_at_1e_9():
    entry = ledger.make_entry(stage="s", mechanism="gaussian", dataset="d", partition="all", sensitivity=1.0, delta=1e-5, event=acct.histogram_event(10.0))
    fp = entry["fingerprint"]
    assert fp == fingerprint() and {"cpu", "cpu_flags", "torch", "torch_cpu_capability", "mkl", "onednn",
                                    "threads", "env"} <= set(fp)
    assert len(short(fp)) == 8
    assert entry["epsilon"] == round(entry["epsilon"], 9) and entry["epsilon"] >= acct.epsilon_pld(
        [acct.histogram_event(10.0)], 1e-5)
    assert entry["neighbouring"] == acct.NEIGHBOURING
