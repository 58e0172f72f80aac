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
    assert got == {"eps": {"imdb": 3.985, "instructions": 5.984}, "delta": 1e-5, "released": 475,
                   "mauve": 0.8656, "mauve_pm": 0.02, "nll": 3.988}


def test_delta_is_the_largest_of_any_dataset():
    import copy

    reports = copy.deepcopy(REPORTS)
    reports["privacy"]["datasets"]["imdb"]["delta"] = 1e-6
    assert summary.summarise(reports)["delta"] == 1e-5


def test_a_non_private_run_summarises_to_strict_json_with_epsilon_inf():
    import copy
    import json

    reports = copy.deepcopy(REPORTS)
    reports["privacy"]["datasets"]["instructions"]["epsilon"] = "inf"  # as the ledger writes it
    got = summary.summarise(reports)
    assert got["eps"] == {"imdb": 3.985, "instructions": "inf"}
    json.dumps(got, allow_nan=False)


def test_summary_is_the_only_dvc_metric():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = [m for s in stages.values() for m in (s.get("metrics") or (s.get("do") or {}).get("metrics") or [])]
    assert declared == [{"metrics/summary.json": {"cache": False}}]


def test_dvc_metrics_show_fits_120_columns(tmp_path):
    """The real `dvc metrics show` of a run with the three shipped datasets and five-digit counts."""
    import json
    import os
    import subprocess
    import sys

    reports = {**REPORTS, "privacy": {"datasets": {**REPORTS["privacy"]["datasets"],
                                                   "hh_rlhf": {"epsilon": 7.98512, "delta": 1e-5}}},
               "resample": {"released": 12345}}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(dvc + ["init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/summary.json").write_text(json.dumps(summary.summarise(reports)))
    (tmp_path / "dvc.yaml").write_text("stages:\n  summary:\n    cmd: 'true'\n"
                                       "    metrics: [{metrics/summary.json: {cache: false}}]\n")
    shown = subprocess.run(dvc + ["metrics", "show"], cwd=tmp_path, check=True, capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "400"}).stdout
    assert "eps.instructions" in shown and "12345" in shown
    assert max(len(line.rstrip()) for line in shown.splitlines()) <= 120, shown


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
